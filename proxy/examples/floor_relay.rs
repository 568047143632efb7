//! The floor for a relay on this machine, for `make bench-relay` (`BENCH_FLOOR=1`): one
//! thread, one edge-triggered epoll (mio), and each session's bytes piped between its TCP
//! client and a Unix-socket upstream with no framing, no protocol state and no interception.
//! Nothing pgml-proxy does can cost less, so proxy/floor is the share of its per-transaction
//! cost that a leaner relay core could win back, and floor/PgBouncer what such a core could
//! reach. Like PgBouncer, it asks for writable events only while a write is pending. A
//! benchmark tool, not a proxy: no TLS, no limits, no cancel routing, and a session's unsent
//! bytes are dropped when either side closes.
//!
//! Usage: floor_relay LISTEN_ADDR UPSTREAM_SOCKET_PATH

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

/// One side of a session: its socket, what is queued for it, and the other side's slot.
struct Side {
    stream: Stream,
    out: Vec<u8>,
    peer: usize,
    /// Registered for writable events (only while `out` is not empty).
    writable: bool,
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
        eprintln!("usage: floor_relay LISTEN_ADDR UPSTREAM_SOCKET_PATH");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut sides: Vec<Option<Side>> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                accept(&mut poll, &mut listener, &upstream, &mut sides);
                continue;
            }
            let slot = event.token().0;
            let peer = sides.get(slot).and_then(Option::as_ref).map(|s| s.peer);
            let ok = (!event.is_writable() || flush(&mut sides, slot))
                && (!event.is_readable() || pump(&mut sides, slot, &mut buf))
                && watch_writable(&poll, &mut sides, slot)
                && peer.is_none_or(|peer| watch_writable(&poll, &mut sides, peer));
            if !ok {
                close(&mut poll, &mut sides, slot);
            }
        }
    }
}

/// Accepts every waiting client and opens its upstream connection.
fn accept(
    poll: &mut Poll,
    listener: &mut TcpListener,
    upstream: &str,
    sides: &mut Vec<Option<Side>>,
) {
    loop {
        let (client, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                eprintln!("floor_relay: accept: {e}");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let server = match UnixStream::connect(upstream) {
            Ok(server) => server,
            Err(e) => {
                eprintln!("floor_relay: connect {upstream}: {e}");
                continue;
            }
        };
        let (a, b) = (free_slot(sides, None), free_slot(sides, None));
        let b = if a == b { free_slot(sides, Some(a)) } else { b };
        for (slot, stream, peer) in [(a, Stream::Tcp(client), b), (b, Stream::Unix(server), a)] {
            let mut side = Side {
                stream,
                out: Vec::new(),
                peer,
                writable: false,
            };
            let registered =
                poll.registry()
                    .register(side.stream.source(), Token(slot), Interest::READABLE);
            if let Err(e) = registered {
                eprintln!("floor_relay: register: {e}");
            }
            sides[slot] = Some(side);
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
fn pump(sides: &mut [Option<Side>], slot: usize, buf: &mut [u8]) -> bool {
    loop {
        let Some(side) = sides.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let peer = side.peer;
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
        other.out.extend_from_slice(&buf[..n]);
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
fn close(poll: &mut Poll, sides: &mut [Option<Side>], slot: usize) {
    let peer = sides.get(slot).and_then(Option::as_ref).map(|s| s.peer);
    for i in std::iter::once(slot).chain(peer) {
        if let Some(mut side) = sides.get_mut(i).and_then(Option::take) {
            let _ = poll.registry().deregister(side.stream.source());
        }
    }
}
