//! A reference for the proxy's model of the upstream (`SessionState`): Postgres' protocol loop
//! as postgres.c and copyfromparse.c run it, written from their rules and independently of the
//! model, on a script of client messages each with the outcome Postgres gives it. It answers
//! with the response tags in order, each with how many client messages had been read then.

/// How Postgres takes a client message when it acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error (for CopyData inside COPY: the COPY fails on this data; for a Sync: its
    /// COMMIT fails).
    Fails,
    /// A Query or Execute that is a COPY TO STDOUT.
    CopyOut,
    /// A Query or Execute that is a COPY FROM STDIN.
    CopyIn,
    /// A COPY FROM STDIN that fails before reading anything (a statement trigger).
    CopyInFails,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    SkipToSync,
    CopyIn { extended: bool },
}

/// What Postgres sent for a script, and where it stood after each message.
#[derive(Debug, Default)]
pub struct Run {
    /// (client messages read when it was sent, tag).
    pub responses: Vec<(usize, u8)>,
    /// `idle[n]`: after the first n messages Postgres waits for a new command outside any
    /// batch, skip or COPY (whatever it still has to send).
    pub idle: Vec<bool>,
    /// `skipping[n]`: after the first n messages it discards everything up to a Sync.
    pub skipping: Vec<bool>,
    /// The session ended (a protocol violation inside COPY) at this message.
    pub closed_at: Option<usize>,
}

/// Runs `script` (tag, outcome) through the reference.
pub fn run(script: &[(u8, Outcome)]) -> Run {
    let mut backend = Backend {
        mode: Mode::Normal,
        in_batch: false,
        read: 0,
        run: Run::default(),
    };
    backend.run.idle.push(true);
    backend.run.skipping.push(false);
    for (i, &(tag, outcome)) in script.iter().enumerate() {
        backend.read = i + 1;
        if backend.run.closed_at.is_none() {
            backend.message(tag, outcome);
        }
        let idle = backend.mode == Mode::Normal && !backend.in_batch;
        backend
            .run
            .idle
            .push(idle && backend.run.closed_at.is_none());
        backend.run.skipping.push(backend.mode == Mode::SkipToSync);
    }
    backend.run
}

struct Backend {
    mode: Mode,
    /// An extended-protocol message ran since the last Sync or Query (its implicit transaction
    /// is open).
    in_batch: bool,
    read: usize,
    run: Run,
}

impl Backend {
    fn send(&mut self, tags: &[u8]) {
        for &tag in tags {
            self.run.responses.push((self.read, tag));
        }
    }

    fn message(&mut self, tag: u8, outcome: Outcome) {
        match self.mode {
            // postgres.c: while ignore_till_sync, everything but Sync is read and dropped.
            Mode::SkipToSync => {
                if tag == b'S' {
                    self.mode = Mode::Normal;
                    self.in_batch = false;
                    self.send(b"Z");
                }
            }
            // copyfromparse.c CopyGetData.
            Mode::CopyIn { extended } => match tag {
                b'd' if outcome == Outcome::Fails => self.copy_failed(extended),
                b'd' | b'H' | b'S' => {}
                b'c' => {
                    self.send(b"C");
                    self.mode = Mode::Normal;
                    if !extended {
                        self.end_command();
                    }
                }
                b'f' => self.copy_failed(extended),
                // "unexpected message type during COPY from stdin", then FATAL: the protocol
                // is out of step.
                _ => {
                    self.send(b"E");
                    self.run.closed_at = Some(self.read);
                }
            },
            Mode::Normal => self.normal(tag, outcome),
        }
    }

    fn normal(&mut self, tag: u8, outcome: Outcome) {
        match tag {
            b'P' | b'B' | b'D' | b'C' => {
                if outcome == Outcome::Fails {
                    self.extended_error();
                    return;
                }
                self.in_batch = true;
                match tag {
                    b'P' => self.send(b"1"),
                    b'B' => self.send(b"2"),
                    b'C' => self.send(b"3"),
                    _ if outcome == Outcome::CopyOut => self.send(b"tT"),
                    _ => self.send(b"n"),
                }
            }
            b'E' => {
                self.in_batch = true;
                match outcome {
                    Outcome::Ok => self.send(b"DDC"),
                    Outcome::Fails => self.extended_error(),
                    Outcome::CopyOut => self.send(b"HddcC"),
                    Outcome::CopyIn => {
                        self.send(b"G");
                        self.mode = Mode::CopyIn { extended: true };
                    }
                    Outcome::CopyInFails => {
                        self.send(b"G");
                        self.copy_failed(true);
                    }
                }
            }
            b'S' => {
                if outcome == Outcome::Fails {
                    self.send(b"E");
                }
                self.in_batch = false;
                self.send(b"Z");
            }
            b'Q' => match outcome {
                Outcome::Ok => {
                    self.send(b"TDC");
                    self.end_command();
                }
                Outcome::Fails => {
                    self.send(b"E");
                    self.end_command();
                }
                Outcome::CopyOut => {
                    self.send(b"HdcC");
                    self.end_command();
                }
                Outcome::CopyIn => {
                    self.send(b"G");
                    self.mode = Mode::CopyIn { extended: false };
                }
                Outcome::CopyInFails => {
                    self.send(b"G");
                    self.copy_failed(false);
                }
            },
            b'F' => {
                self.send(if outcome == Outcome::Fails {
                    b"E"
                } else {
                    b"V"
                });
                self.end_command();
            }
            // Flush sends what is buffered; CopyData, CopyDone and CopyFail outside COPY are
            // read and ignored.
            _ => {}
        }
    }

    /// The ReadyForQuery that ends a Query or FunctionCall (it commits the implicit
    /// transaction, an extended batch's included).
    fn end_command(&mut self) {
        self.in_batch = false;
        self.send(b"Z");
    }

    fn extended_error(&mut self) {
        self.send(b"E");
        self.mode = Mode::SkipToSync;
    }

    fn copy_failed(&mut self, extended: bool) {
        self.send(b"E");
        if extended {
            self.mode = Mode::SkipToSync;
        } else {
            self.mode = Mode::Normal;
            self.end_command();
        }
    }
}
