//! The floor for a relay on this machine, for `make bench-relay` (`BENCH_FLOOR=1`): one
//! thread, one edge-triggered epoll (mio), and each session's bytes piped between its TCP
//! client and a Unix-socket upstream with no framing, no protocol state and no interception.
//! Nothing pgml-proxy does can cost less, so proxy/floor is the share of its per-transaction
//! cost that a leaner relay core could win back, and floor/PgBouncer what such a core could
//! reach. Like PgBouncer, it asks for writable events only while a write is pending. A
//! benchmark tool, not a proxy: no TLS, no limits, no cancel routing, and a session's unsent
//! bytes are dropped when either side closes.
//!
//! With THREADS > 1, one thread accepts and deals the sessions round-robin to THREADS I/O
//! threads, each with its own epoll: the floor for a relay that uses more than one CPU.
//!
//! With FLOOR_TRACK=1 (one thread), every message is also framed and recorded in a
//! `SessionState`, as the relay's lean path does (what the upstream owes, the transaction
//! status, the statement clock), before it is queued for the other side: what a relay core on
//! this loop would cost with the proxy's protocol tracking, the interception layer's checks
//! left out.
//!
//! Usage: floor_relay LISTEN_ADDR UPSTREAM_SOCKET_PATH [THREADS]

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use pgml_proxy::net::frame::{peek_len_within, Direction};

/// One side of a session: its socket, what is queued for it, and the other side's slot.
struct Side {
    stream: Stream,
    out: Vec<u8>,
    peer: usize,
    /// Registered for writable events (only while `out` is not empty).
    writable: bool,
    /// This side is the client's.
    client: bool,
}

/// FLOOR_TRACK=1: a session's protocol state, and the incomplete message of each side.
#[derive(Default)]
struct Tracker {
    state: pgml_proxy::SessionState,
    from_client: Vec<u8>,
    from_server: Vec<u8>,
    /// The client's untagged messages (SSLRequest, StartupMessage) are done.
    started: bool,
    /// The client asked for SSL: the server's first byte is its one-byte answer.
    ssl_asked: bool,
}

/// The SSLRequest and GSSENCRequest codes (an untagged message that another follows).
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;

impl Tracker {
    /// Frames and records what `client` (or the server) sent, and queues the complete
    /// messages in `out`.
    fn relay(&mut self, client: bool, bytes: &[u8], out: &mut Vec<u8>) {
        let buf = if client {
            &mut self.from_client
        } else {
            &mut self.from_server
        };
        buf.extend_from_slice(bytes);
        let mut at = 0;
        if !client && self.ssl_asked && !buf.is_empty() {
            // The server's answer to SSLRequest ('N': the floor has no TLS).
            self.ssl_asked = false;
            at = 1;
        }
        loop {
            let rest = &buf[at..];
            if client && !self.started {
                let Some(&[a, b, c, d, e, f, g, h]) = rest.get(..8) else {
                    break;
                };
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if rest.len() < len || len < 8 {
                    break;
                }
                match u32::from_be_bytes([e, f, g, h]) {
                    SSL_REQUEST => self.ssl_asked = true,
                    GSSENC_REQUEST => {}
                    _ => self.started = true,
                }
                at += len;
                continue;
            }
            // Framed as the lean path frames it (a bad length ends the tracking here).
            let direction = if client {
                Direction::FromClient
            } else {
                Direction::FromUpstream
            };
            let total = match peek_len_within(rest, direction, i32::MAX as usize) {
                Ok(Some(total)) if rest.len() >= total => total,
                _ => break,
            };
            let tag = rest[0];
            if client {
                if pgml_proxy::session::timing::opens_cycle(tag) {
                    self.state.clock_mut().arrived();
                }
                self.state.on_relayed(tag);
            } else if let Err(e) = self.state.on_server_parts(tag, &rest[5..total]) {
                eprintln!("floor_relay: {e}");
            }
            at += total;
        }
        out.extend_from_slice(&buf[..at]);
        buf.drain(..at);
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_relay LISTEN_ADDR UPSTREAM_SOCKET_PATH [THREADS]");
        std::process::exit(2);
    };
    let threads: usize = match args.next().map(|t| t.parse()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("floor_relay: THREADS must be a positive number");
            std::process::exit(2);
        }
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    if threads == 1 {
        // One thread for everything, the listener included (as PgBouncer).
        let mut worker = Worker::new()?;
        let mut listener = TcpListener::bind(listen)?;
        worker
            .poll
            .registry()
            .register(&mut listener, WAKE, Interest::READABLE)?;
        return worker.run(|worker| loop {
            match listener.accept() {
                Ok((client, _)) => worker.adopt(client, &upstream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("floor_relay: accept: {e}");
                    return;
                }
            }
        });
    }
    // More threads: this one accepts and deals the sessions round-robin to the others.
    let mut handoffs = Vec::with_capacity(threads);
    for _ in 0..threads {
        let mut worker = Worker::new()?;
        let waker = mio::Waker::new(worker.poll.registry(), WAKE)?;
        let (tx, rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
        let upstream = upstream.clone();
        std::thread::spawn(move || {
            let result = worker.run(|worker| {
                while let Ok(client) = rx.try_recv() {
                    worker.adopt(TcpStream::from_std(client), &upstream);
                }
            });
            if let Err(e) = result {
                eprintln!("floor_relay: worker: {e}");
            }
        });
        handoffs.push((tx, waker));
    }
    let listener = std::net::TcpListener::bind(listen)?;
    for (i, client) in listener.incoming().enumerate() {
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                eprintln!("floor_relay: accept: {e}");
                continue;
            }
        };
        client.set_nonblocking(true)?;
        let (tx, waker) = &handoffs[i % threads];
        if tx.send(client).is_ok() {
            waker.wake()?;
        }
    }
    Ok(())
}

/// The token of the listener (one thread) or of the waker (more threads).
const WAKE: Token = Token(usize::MAX);

/// One I/O thread: its epoll and the sessions it pipes.
struct Worker {
    poll: Poll,
    sides: Vec<Option<Side>>,
    buf: Vec<u8>,
    /// FLOOR_TRACK=1: each session's tracking, at its client's slot.
    track: Option<Vec<Option<Tracker>>>,
}

impl Worker {
    fn new() -> std::io::Result<Self> {
        Ok(Worker {
            poll: Poll::new()?,
            sides: Vec::new(),
            buf: vec![0u8; 64 * 1024],
            track: std::env::var_os("FLOOR_TRACK").map(|_| Vec::new()),
        })
    }

    /// Pipes sessions until an error; `on_wake` runs for the WAKE token.
    fn run(&mut self, mut on_wake: impl FnMut(&mut Worker)) -> std::io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in &events {
                if event.token() == WAKE {
                    on_wake(self);
                    continue;
                }
                let slot = event.token().0;
                let sides = &mut self.sides;
                let peer = sides.get(slot).and_then(Option::as_ref).map(|s| s.peer);
                let ok = (!event.is_writable() || flush(sides, slot))
                    && (!event.is_readable()
                        || pump(sides, slot, &mut self.buf, self.track.as_mut()))
                    && watch_writable(&self.poll, sides, slot)
                    && peer.is_none_or(|peer| watch_writable(&self.poll, sides, peer));
                if !ok {
                    close(&self.poll, sides, slot);
                }
            }
        }
    }

    /// Opens the upstream connection for a new client and starts piping the pair (or closes
    /// both when either cannot be registered: no session is left that no event would reach).
    fn adopt(&mut self, client: TcpStream, upstream: &str) {
        let _ = client.set_nodelay(true);
        let server = match UnixStream::connect(upstream) {
            Ok(server) => server,
            Err(e) => {
                eprintln!("floor_relay: connect {upstream}: {e}");
                return;
            }
        };
        let sides = &mut self.sides;
        let a = free_slot(sides, None);
        let b = free_slot(sides, Some(a));
        if let Some(track) = &mut self.track {
            if track.len() <= a {
                track.resize_with(a + 1, || None);
            }
            track[a] = Some(Tracker::default());
        }
        for (slot, stream, peer) in [(a, Stream::Tcp(client), b), (b, Stream::Unix(server), a)] {
            let mut side = Side {
                stream,
                out: Vec::new(),
                peer,
                writable: false,
                client: slot == a,
            };
            let registered = self.poll.registry().register(
                side.stream.source(),
                Token(slot),
                Interest::READABLE,
            );
            sides[slot] = Some(side);
            if let Err(e) = registered {
                eprintln!("floor_relay: register: {e}");
                close(&self.poll, sides, a);
                return;
            }
        }
    }
}

/// A free slot in `sides` other than `not`, growing it when there is none.
fn free_slot(sides: &mut Vec<Option<Side>>, not: Option<usize>) -> usize {
    match sides
        .iter()
        .enumerate()
        .position(|(i, s)| s.is_none() && Some(i) != not)
    {
        Some(i) => i,
        None => {
            sides.push(None);
            sides.len() - 1
        }
    }
}

/// Reads everything `slot` has and queues it for its peer, writing as far as the peer takes.
/// False when either side is gone.
fn pump(
    sides: &mut [Option<Side>],
    slot: usize,
    buf: &mut [u8],
    mut track: Option<&mut Vec<Option<Tracker>>>,
) -> bool {
    loop {
        let Some(side) = sides.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let peer = side.peer;
        let (client, at) = (side.client, if side.client { slot } else { peer });
        let n = match side.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let Some(other) = sides.get_mut(peer).and_then(Option::as_mut) else {
            return false;
        };
        match track
            .as_mut()
            .and_then(|t| t.get_mut(at))
            .and_then(Option::as_mut)
        {
            Some(track) => track.relay(client, &buf[..n], &mut other.out),
            None => other.out.extend_from_slice(&buf[..n]),
        }
        if !flush(sides, peer) {
            return false;
        }
    }
}

/// Writes what is queued for `slot` until done or the socket is full. False when it is gone.
fn flush(sides: &mut [Option<Side>], slot: usize) -> bool {
    let Some(side) = sides.get_mut(slot).and_then(Option::as_mut) else {
        return false;
    };
    let mut written = 0;
    while written < side.out.len() {
        match side.stream.write(&side.out[written..]) {
            Ok(0) => return false,
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    side.out.drain(..written);
    true
}

/// Asks for writable events on `slot` only while something is queued for it: a registered
/// interest in writability wakes the thread each time the peer drains the socket (for Unix
/// sockets, at every message read), for nothing.
fn watch_writable(poll: &Poll, sides: &mut [Option<Side>], slot: usize) -> bool {
    let Some(side) = sides.get_mut(slot).and_then(Option::as_mut) else {
        return false;
    };
    let want = !side.out.is_empty();
    if want == side.writable {
        return true;
    }
    side.writable = want;
    let interest = if want {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    poll.registry()
        .reregister(side.stream.source(), Token(slot), interest)
        .is_ok()
}

/// Closes a session: both sides are deregistered and dropped.
fn close(poll: &Poll, sides: &mut [Option<Side>], slot: usize) {
    let peer = sides.get(slot).and_then(Option::as_ref).map(|s| s.peer);
    for i in std::iter::once(slot).chain(peer) {
        if let Some(mut side) = sides.get_mut(i).and_then(Option::take) {
            let _ = poll.registry().deregister(side.stream.source());
        }
    }
}
