//! One reading of the upstream's message stream: Postgres' protocol loop (postgres.c,
//! copyfromparse.c) replayed on the messages relayed to it, advanced by its responses. Relayed
//! messages wait in a queue until the responses show how Postgres took them: each Parse, Bind,
//! Describe, Execute and Close ends with one response of its own or an ErrorResponse (then
//! Postgres skips to the next Sync, a Query in between included); a Query or FunctionCall, and a
//! Sync, end with a ReadyForQuery; a COPY FROM STDIN reads what follows its Query or Execute up
//! to a CopyDone or CopyFail, ignoring Syncs and Flushes.

use std::collections::VecDeque;

use crate::net::messages::{client_tag, server_tag};

/// Server tags `net::messages` has no name for (nothing else needs them).
const BIND_COMPLETE: u8 = b'2';
const EMPTY_QUERY_RESPONSE: u8 = b'I';
const NO_DATA: u8 = b'n';
const PORTAL_SUSPENDED: u8 = b's';

/// Messages Postgres may send at any time, answering no message.
fn asynchronous(tag: u8) -> bool {
    matches!(
        tag,
        server_tag::NOTICE_RESPONSE
            | server_tag::PARAMETER_STATUS
            | server_tag::NOTIFICATION_RESPONSE
            | server_tag::BACKEND_KEY_DATA
            | server_tag::AUTHENTICATION
            | server_tag::NEGOTIATE_PROTOCOL_VERSION
    )
}

/// The responses of a Query's own that `answered` takes only as its start (`progress`).
fn command_response(tag: u8) -> bool {
    matches!(
        tag,
        server_tag::ROW_DESCRIPTION
            | server_tag::DATA_ROW
            | server_tag::COMMAND_COMPLETE
            | EMPTY_QUERY_RESPONSE
    )
}

/// An extended-protocol message, by the responses it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
}

impl Step {
    /// `tag` is the response that ends it.
    fn ended_by(self, tag: u8) -> bool {
        match self {
            Step::Parse => tag == server_tag::PARSE_COMPLETE,
            Step::Bind => tag == BIND_COMPLETE,
            Step::Close => tag == server_tag::CLOSE_COMPLETE,
            Step::Describe => matches!(tag, server_tag::ROW_DESCRIPTION | NO_DATA),
            Step::Execute => matches!(
                tag,
                server_tag::COMMAND_COMPLETE | EMPTY_QUERY_RESPONSE | PORTAL_SUSPENDED
            ),
        }
    }

    /// `tag` may answer it without ending it.
    fn answered_by(self, tag: u8) -> bool {
        match self {
            Step::Describe => tag == server_tag::PARAMETER_DESCRIPTION,
            Step::Execute => matches!(
                tag,
                server_tag::DATA_ROW
                    | server_tag::COPY_OUT_RESPONSE
                    | server_tag::COPY_DATA
                    | server_tag::COPY_DONE
            ),
            _ => false,
        }
    }
}

/// A relayed message whose outcome upstream is not known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Extended(Step),
    /// A Query or FunctionCall; `started` once a response of its own arrived (Postgres always
    /// sends one before the ReadyForQuery that ends it).
    Command {
        started: bool,
    },
    Sync,
    /// A Sync sent after the Query or Execute of a COPY FROM STDIN, before its end: the COPY
    /// reads and ignores it, unless it fails before getting to it.
    CopySync,
    /// CopyDone or CopyFail: ends a COPY FROM STDIN; outside one, Postgres ignores it.
    CopyEnd,
}

impl Pending {
    fn owes_ready(self) -> bool {
        matches!(self, Pending::Command { .. } | Pending::Sync)
    }
}

/// Where Postgres is with the message at the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Normal,
    /// After an error in an extended-protocol message everything up to the next Sync is
    /// discarded unanswered. Only while the queue is empty (once relayed, the Sync is its head).
    SkipToSync,
    /// In COPY FROM STDIN, started by the Query or Execute at the head of the queue; `open`
    /// while nothing but Syncs was relayed after it (the COPY waits for the client's data).
    CopyIn { extended: bool, open: bool },
}

/// What a server message did to the ReadyForQuery messages owed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answered {
    /// It is the ReadyForQuery of the oldest message that owed one.
    pub ready: bool,
    /// Messages that owed a ReadyForQuery and will get none (skipped after an error), oldest
    /// first.
    pub forgotten: usize,
}

/// One reading of the stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Reading {
    queue: VecDeque<Pending>,
    mode: Mode,
    /// ReadyForQuery messages the queue's Command and Sync entries will get.
    owed: usize,
    /// The last message relayed that Postgres acts on was an extended-protocol one: its
    /// implicit transaction stays open until a Sync (or a Query) ends the batch.
    in_batch: bool,
}

impl Reading {
    /// ReadyForQuery messages still to come without more client input (a COPY FROM STDIN in
    /// progress waits for the client's data before its Query is answered).
    pub fn pending_ready(&self) -> usize {
        let blocked = matches!(
            self.mode,
            Mode::CopyIn {
                extended: false,
                open: true
            }
        );
        self.owed.saturating_sub(usize::from(blocked))
    }

    /// Everything relayed has been answered; no batch, COPY or skip is in progress.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && matches!(self.mode, Mode::Normal) && !self.in_batch
    }

    /// Postgres discards what it reads until a Sync.
    pub fn skipping(&self) -> bool {
        matches!(self.mode, Mode::SkipToSync)
    }

    /// Syncs are taken as read by a COPY still in progress (which may fail before reading them).
    pub fn presumes(&self) -> bool {
        self.copy_syncs() > 0
    }

    /// A client message with `tag` was relayed; true when it owes a ReadyForQuery.
    #[inline]
    pub fn relayed(&mut self, tag: u8) -> bool {
        let entry = match tag {
            client_tag::QUERY | client_tag::FUNCTION_CALL => Pending::Command { started: false },
            client_tag::SYNC => Pending::Sync,
            client_tag::PARSE => Pending::Extended(Step::Parse),
            client_tag::BIND => Pending::Extended(Step::Bind),
            client_tag::DESCRIBE => Pending::Extended(Step::Describe),
            client_tag::EXECUTE => Pending::Extended(Step::Execute),
            client_tag::CLOSE => Pending::Extended(Step::Close),
            client_tag::COPY_DONE | client_tag::COPY_FAIL => Pending::CopyEnd,
            // Flush, CopyData and Terminate get no answer and open or end nothing.
            _ => return false,
        };
        match self.mode {
            Mode::SkipToSync if !matches!(entry, Pending::Sync) => return false,
            Mode::SkipToSync => self.mode = Mode::Normal,
            Mode::CopyIn {
                extended,
                open: true,
            } => {
                if matches!(entry, Pending::Sync) {
                    self.queue.push_back(Pending::CopySync);
                    return false;
                }
                // A CopyDone or CopyFail ends the COPY. (Anything else would be a protocol
                // violation that ends the session: it counts as if the COPY had failed before
                // reading it, the only case where the count still matters.)
                self.mode = Mode::CopyIn {
                    extended,
                    open: false,
                };
            }
            _ => {}
        }
        match entry {
            Pending::CopyEnd if self.queue.is_empty() && matches!(self.mode, Mode::Normal) => {
                return false;
            }
            Pending::Extended(_) => self.in_batch = true,
            Pending::Command { .. } | Pending::Sync => self.in_batch = false,
            Pending::CopyEnd | Pending::CopySync => {}
        }
        self.queue.push_back(entry);
        let owes = entry.owes_ready();
        self.owed += usize::from(owes);
        owes
    }

    /// Whether Postgres can send `tag` now in this reading (asynchronous messages always).
    pub fn allows(&self, tag: u8) -> bool {
        let front = self.queue.front().copied();
        let command = matches!(front, Some(Pending::Command { .. }));
        let step = |check: fn(Step, u8) -> bool| match front {
            Some(Pending::Extended(step)) => check(step, tag),
            _ => false,
        };
        match tag {
            server_tag::READY_FOR_QUERY => matches!(
                front,
                Some(Pending::Sync | Pending::Command { started: true })
            ),
            server_tag::ERROR_RESPONSE => {
                front.is_some_and(|f| f != Pending::CopyEnd && f != Pending::CopySync)
            }
            server_tag::COPY_IN_RESPONSE | server_tag::COPY_BOTH_RESPONSE => {
                command || front == Some(Pending::Extended(Step::Execute))
            }
            server_tag::FUNCTION_CALL_RESPONSE => command,
            server_tag::COMMAND_COMPLETE if matches!(self.mode, Mode::CopyIn { .. }) => true,
            server_tag::COMMAND_COMPLETE
            | server_tag::ROW_DESCRIPTION
            | EMPTY_QUERY_RESPONSE
            | server_tag::DATA_ROW
            | server_tag::COPY_OUT_RESPONSE
            | server_tag::COPY_DATA
            | server_tag::COPY_DONE
                if command =>
            {
                true
            }
            _ if asynchronous(tag) => true,
            _ => step(Step::ended_by) || step(Step::answered_by),
        }
    }

    /// The upstream sent a message with `tag`. A response this reading does not allow changes
    /// what it can (a ReadyForQuery owed by a Sync is taken as that Sync's).
    #[inline]
    pub fn answered(&mut self, tag: u8) -> Answered {
        // The usual case first, on every row: a response to the message at the head of the
        // queue, outside COPY, that `progress` would take as it is here (none of these tags
        // is asynchronous, nor one `answered` handles apart), and after which `settle` has
        // nothing to do unless it ended that message.
        if matches!(self.mode, Mode::Normal) {
            match self.queue.front_mut() {
                Some(Pending::Extended(step)) if step.ended_by(tag) => {
                    self.queue.pop_front();
                    self.settle();
                    return Answered::default();
                }
                Some(Pending::Extended(step)) if step.answered_by(tag) => {
                    return Answered::default();
                }
                Some(Pending::Command { started }) if command_response(tag) => {
                    *started = true;
                    return Answered::default();
                }
                _ => {}
            }
        }
        self.answered_in_full(tag)
    }

    /// `answered`, every case by the general rules (the shortcuts above are tested against it).
    #[inline(never)]
    fn answered_in_full(&mut self, tag: u8) -> Answered {
        let mut answered = Answered::default();
        if asynchronous(tag) {
            return answered;
        }
        match tag {
            server_tag::READY_FOR_QUERY => answered.ready = self.ready(),
            server_tag::ERROR_RESPONSE => answered.forgotten = self.error(),
            server_tag::COPY_IN_RESPONSE | server_tag::COPY_BOTH_RESPONSE => {
                answered.forgotten = self.copy_in();
            }
            _ => self.progress(tag),
        }
        self.settle();
        answered
    }

    /// The proxy ended the client's batch with a Sync of its own and read its ReadyForQuery:
    /// every extended-protocol message before it has been answered, and no skip is left.
    pub fn batch_ended_privately(&mut self) {
        self.queue
            .retain(|e| matches!(e, Pending::Command { .. } | Pending::Sync));
        self.mode = Mode::Normal;
        self.in_batch = false;
    }

    /// The COPY in progress failed: one reading per number of the Syncs taken as read that
    /// it may have read before failing (all of them first, then ever fewer; at most `max`,
    /// the last being none), each with the error applied.
    pub fn copy_failed(&self, max: usize) -> (Vec<Reading>, Answered) {
        let syncs = self.copy_syncs();
        let mut counts: Vec<usize> = (0..=syncs).rev().take(max.max(2)).collect();
        if let Some(last) = counts.last_mut() {
            *last = 0;
        }
        let mut first = None;
        let readings = counts
            .into_iter()
            .map(|read| {
                let mut reading = self.clone();
                reading.queue.drain(1..1 + read);
                // Those it did not read, the main loop reads after it: ordinary Syncs.
                for entry in reading.queue.range_mut(1..1 + syncs - read) {
                    *entry = Pending::Sync;
                }
                reading.owed += syncs - read;
                if read < syncs && !reading.acts_after(1 + syncs - read) {
                    // The last of them ends the batch.
                    reading.in_batch = false;
                }
                let answered = reading.answered(server_tag::ERROR_RESPONSE);
                first.get_or_insert(answered);
                reading
            })
            .collect();
        (readings, first.unwrap_or_default())
    }

    /// The COPY at the head is in progress and an ErrorResponse would end it.
    pub fn in_copy(&self) -> bool {
        matches!(self.mode, Mode::CopyIn { .. })
    }

    /// Whether a message Postgres acts on (not a CopyDone or CopyFail) waits at `at` or later.
    fn acts_after(&self, at: usize) -> bool {
        self.queue
            .iter()
            .skip(at)
            .any(|e| e.owes_ready() || matches!(e, Pending::Extended(_)))
    }

    fn copy_syncs(&self) -> usize {
        if !self.in_copy() {
            return 0;
        }
        self.queue
            .iter()
            .skip(1)
            .take_while(|e| **e == Pending::CopySync)
            .count()
    }

    fn ready(&mut self) -> bool {
        // Postgres only sends ReadyForQuery from its main loop: no skip, no COPY.
        self.mode = Mode::Normal;
        let Some(&front) = self.queue.front() else {
            return false;
        };
        if let Pending::Extended(_) | Pending::CopyEnd | Pending::CopySync = front {
            // The responses that ended what is before it were missed: it is the first Sync's.
            let Some(at) = self.queue.iter().position(|e| e.owes_ready()) else {
                return false;
            };
            if self.queue[at] != Pending::Sync {
                return false;
            }
            self.queue.drain(..at);
        }
        self.queue.pop_front();
        self.owed = self.owed.saturating_sub(1);
        true
    }

    /// An ErrorResponse; returns how many owed messages it skipped.
    fn error(&mut self) -> usize {
        if let Mode::CopyIn { extended, .. } = self.mode {
            // The COPY failed (CopyFail, bad data, a protocol violation). Syncs still taken as
            // read by it were (`copy_failed` made the other readings); the CopyDone or CopyFail
            // after them is ignored either way.
            self.mode = Mode::Normal;
            while self.queue.get(1) == Some(&Pending::CopySync) {
                self.queue.remove(1);
            }
            if self.queue.get(1) == Some(&Pending::CopyEnd) {
                self.queue.remove(1);
            }
            if !extended {
                // The Query is answered with its ReadyForQuery.
                return 0;
            }
            self.queue.pop_front();
            return self.skip_to_sync();
        }
        match self.queue.front_mut() {
            Some(Pending::Extended(_)) => {
                self.queue.pop_front();
                self.skip_to_sync()
            }
            Some(Pending::Command { started }) => {
                *started = true;
                0
            }
            // A Sync's COMMIT failed (its ReadyForQuery follows), or a FATAL out of the blue.
            _ => 0,
        }
    }

    /// Drops everything up to the next Sync, as Postgres does after an error in an extended
    /// message; returns how many owed messages went with it.
    fn skip_to_sync(&mut self) -> usize {
        let mut forgotten = 0;
        while let Some(&front) = self.queue.front() {
            if matches!(front, Pending::Sync) {
                break;
            }
            forgotten += usize::from(front.owes_ready());
            self.queue.pop_front();
        }
        self.owed = self.owed.saturating_sub(forgotten);
        if self.queue.is_empty() {
            self.mode = Mode::SkipToSync;
        }
        forgotten
    }

    /// A CopyInResponse (or CopyBothResponse) to the Query or Execute at the head: the
    /// messages after it are the COPY's to read, up to its CopyDone or CopyFail. Returns how
    /// many Syncs it takes as read (they owe nothing now).
    fn copy_in(&mut self) -> usize {
        let extended = match self.queue.front_mut() {
            Some(Pending::Command { started }) => {
                *started = true;
                false
            }
            Some(Pending::Extended(Step::Execute)) => true,
            _ => return 0,
        };
        let mut at = 1;
        while self.queue.get(at) == Some(&Pending::Sync) {
            self.queue[at] = Pending::CopySync;
            at += 1;
        }
        self.owed = self.owed.saturating_sub(at - 1);
        if at > 1 && !self.acts_after(at) {
            // Those Syncs did not end the batch: the batch is the Query's or Execute's again.
            self.in_batch = extended;
        }
        let open = at == self.queue.len();
        self.mode = Mode::CopyIn { extended, open };
        at - 1
    }

    /// Any other response: it may end the extended message at the head, start the Query
    /// there, or end a COPY FROM STDIN.
    fn progress(&mut self, tag: u8) {
        if let Mode::CopyIn { extended, .. } = self.mode {
            if tag == server_tag::COMMAND_COMPLETE {
                // The COPY read its CopyDone, and every Sync before it.
                self.mode = Mode::Normal;
                while self.queue.get(1) == Some(&Pending::CopySync) {
                    self.queue.remove(1);
                }
                if self.queue.get(1) == Some(&Pending::CopyEnd) {
                    self.queue.remove(1);
                }
                if extended {
                    self.queue.pop_front();
                }
            }
            return;
        }
        match self.queue.front_mut() {
            Some(Pending::Extended(step)) if step.ended_by(tag) => {
                self.queue.pop_front();
            }
            Some(Pending::Command { started }) => *started = true,
            _ => {}
        }
    }

    /// Outside COPY, Postgres ignores CopyDone and CopyFail.
    fn settle(&mut self) {
        while matches!(self.mode, Mode::Normal)
            && matches!(self.queue.front(), Some(Pending::CopyEnd))
        {
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CLIENT_TAGS: &[u8] = b"QFSPBDECcfdHX";
    const SERVER_TAGS: &[u8] = b"ZEGWHdcC123TnItDsNSAKRvV";

    proptest! {
        /// The shortcuts of `answered` change nothing: any stream of relayed messages and
        /// responses leaves the reading, and every answer, as the general rules do.
        #[test]
        fn the_usual_case_shortcut_agrees_with_the_general_rules(
            steps in prop::collection::vec((any::<bool>(), 0usize..64), 0..80)
        ) {
            let mut reading = Reading::default();
            for (from_client, pick) in steps {
                if from_client {
                    reading.relayed(CLIENT_TAGS[pick % CLIENT_TAGS.len()]);
                    continue;
                }
                let tag = SERVER_TAGS[pick % SERVER_TAGS.len()];
                let mut general = reading.clone();
                let expected = general.answered_in_full(tag);
                prop_assert_eq!(reading.answered(tag), expected, "{}", tag as char);
                prop_assert_eq!(&reading, &general, "{}", tag as char);
            }
        }
    }
}
