//! The relay core: beside each relay thread, a thread with its own epoll loop (mio) that
//! relays the sessions lent to it, as the lean path would, without a runtime in between: no
//! task, no waker, no timer wheel, no future per read or write. A session's task lends it
//! (`park`) once it has relayed `park_after` statement cycles in a row on the lean path: both
//! sockets (plain TCP or Unix-domain ones; TLS sessions stay on their task), the buffers, the
//! session state and the hook. The core frames and records every message with the lean path's
//! own code (`plain_from_client` / `plain_from_upstream`: same hook checks, same bookkeeping,
//! same limits) and gives the session back to its task, untouched past the last message it
//! relayed, at the first thing that is not plain: a message the hook wants, one over
//! `BUDGET_OVER` bytes, a framing error, either side closing or failing. The task then takes
//! it up where the core left it, by the same paths as a session that was never lent.
//!
//! A session is never lost in the core: dropping it (the core stopping, its channel closing,
//! a panic unwinding) gives it back, and a task that is dropped while its session is lent (the
//! shutdown's cut, an abort) recalls it and waits until the core has given it back, so that
//! the session's sockets are whole again for the FATAL the cut sends.
//!
//! Clients whose statements keep needing the full path (a pgml call, a Parse every
//! statement) never relay `park_after` cycles in a row and stay on their task: lending costs
//! four `epoll_ctl` calls and a wake-up across threads each way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use mio::unix::SourceFd;
use mio::{Events, Interest, Registry, Token};

use super::lean::{plain_from_client, plain_from_upstream};
use super::{shed, SessionIo, HIGH_WATER};
use crate::error::Result;
use crate::net::stream::{lend, lendable, PlainSocket};
use crate::session::cpu_affinity;
use crate::session::hook::SessionHook;
use crate::session::state::SessionState;

/// Statement cycles in a row on the lean path after which a session is lent to the core.
pub const PARK_AFTER: u32 = 64;

/// How long a dropped task waits for the core to give its session back (it takes
/// microseconds; this only bounds a core that is stuck).
const RECALL_WAIT: Duration = Duration::from_secs(2);

/// The token of the core's waker (commands arrived, or stop).
const WAKE: Token = Token(usize::MAX);

/// Bytes read from a socket at a time.
const SCRATCH: usize = 64 * 1024;

/// What a session lends the core: both sockets, the buffers and the state.
pub(super) struct Lent {
    client: PlainSocket,
    upstream: PlainSocket,
    client_in: BytesMut,
    upstream_in: BytesMut,
    to_client: BytesMut,
    to_upstream: BytesMut,
    to_client_grew: bool,
    to_upstream_grew: bool,
    client_limit: usize,
    state: SessionState,
}

impl SessionIo {
    /// Both sockets are plain (not TLS) and nothing waits to be flushed: the session can be
    /// lent to the core.
    pub(super) fn lendable(&self) -> bool {
        !self.client_flush
            && !self.upstream_flush
            && lendable(&self.client_rd, &self.client_wr)
            && lendable(&self.upstream_rd, &self.upstream_wr)
    }

    /// Lends the sockets, buffers and state (None, and nothing taken, when the session is not
    /// on the lean path or not `lendable`). An error when a socket could not be taken out of
    /// the runtime: the session cannot go on.
    fn lend(&mut self) -> Result<Option<Lent>> {
        if !(self.lean_ok() && self.lendable()) {
            return Ok(None);
        }
        let Some(client) = lend(&mut self.client_rd, &mut self.client_wr) else {
            return Ok(None);
        };
        let client = client?;
        let upstream = match lend(&mut self.upstream_rd, &mut self.upstream_wr) {
            Some(Ok(upstream)) => upstream,
            failed => {
                // The client's socket is put back as it was.
                let (rd, wr) = client.restore()?;
                self.client_rd = rd;
                self.client_wr = wr;
                return match failed {
                    Some(Err(e)) => Err(e.into()),
                    _ => Ok(None),
                };
            }
        };
        Ok(Some(Lent {
            client,
            upstream,
            client_in: std::mem::take(&mut self.client_in),
            upstream_in: std::mem::take(&mut self.upstream_in),
            to_client: std::mem::take(&mut self.to_client),
            to_upstream: std::mem::take(&mut self.to_upstream),
            to_client_grew: self.to_client_grew,
            to_upstream_grew: self.to_upstream_grew,
            client_limit: self.client_limit,
            state: std::mem::take(&mut self.state),
        }))
    }

    /// Takes back what `lend` lent, its sockets registered with the current runtime again.
    fn take_back(&mut self, lent: Lent) -> Result<()> {
        self.client_in = lent.client_in;
        self.upstream_in = lent.upstream_in;
        self.to_client = lent.to_client;
        self.to_upstream = lent.to_upstream;
        self.to_client_grew = lent.to_client_grew;
        self.to_upstream_grew = lent.to_upstream_grew;
        self.client_limit = lent.client_limit;
        self.state = lent.state;
        let (rd, wr) = lent.client.restore()?;
        self.client_rd = rd;
        self.client_wr = wr;
        let (rd, wr) = lent.upstream.restore()?;
        self.upstream_rd = rd;
        self.upstream_wr = wr;
        Ok(())
    }
}

/// A relay thread's way to its core; cheap to clone.
#[derive(Clone)]
pub struct CoreHandle {
    link: Arc<Link>,
    park_after: u32,
}

/// What a core and the tasks that lend to it share.
struct Link {
    commands: mpsc::Sender<Command>,
    waker: mio::Waker,
    next_key: AtomicU64,
    stop: AtomicBool,
}

/// Stops its core when dropped: every session lent to it goes back to its task.
pub struct CoreStop(Arc<Link>);

impl Drop for CoreStop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
        if let Err(e) = self.0.waker.wake() {
            tracing::warn!(error = %e, "could not wake a relay core to stop it");
        }
    }
}

enum Command {
    /// A session lent under a key.
    Lend(u64, Box<dyn Parked>),
    /// Its task wants the session with that key back now.
    Recall(u64),
}

impl CoreHandle {
    /// Starts a core thread named `name` (pinned to `cpu`, if given); sessions are lent to it
    /// after `park_after` statement cycles in a row on the lean path.
    pub fn start(
        name: String,
        cpu: Option<usize>,
        park_after: u32,
    ) -> std::io::Result<(CoreHandle, CoreStop)> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let (commands, inbox) = mpsc::channel();
        let link = Arc::new(Link {
            commands,
            waker,
            next_key: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let core_link = link.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(e) = cpu_affinity::pin_current_thread(cpu) {
                    tracing::warn!(cpu, error = %e, "could not pin a relay core");
                }
            }
            let mut core = Core {
                poll,
                inbox,
                slots: Vec::new(),
                free: Vec::new(),
                keys: HashMap::new(),
                scratch: vec![0; SCRATCH],
            };
            if let Err(e) = core.run(&core_link) {
                tracing::error!(error = %e, "relay core stopped; its sessions went back to their tasks");
            }
        })?;
        Ok((
            CoreHandle {
                link: link.clone(),
                park_after,
            },
            CoreStop(link),
        ))
    }

    /// Statement cycles in a row on the lean path after which a session is lent.
    pub fn park_after(&self) -> u32 {
        self.park_after
    }
}

/// A lent session, as the core sees it (its hook's type erased).
trait Parked: Send {
    /// Registers both sockets for reading under `slot`'s tokens.
    fn register(&mut self, registry: &Registry, slot: usize) -> std::io::Result<()>;
    /// Notes that the client's socket (or the upstream's) is readable, or `closed` (the peer
    /// shut it down, or it failed).
    fn readable(&mut self, client: bool, closed: bool);
    /// Relays what can be relayed now; false when the session goes back to its task.
    fn drive(&mut self, registry: &Registry, slot: usize, scratch: &mut [u8]) -> bool;
    /// Deregisters both sockets (before the session is dropped, and so given back).
    fn deregister(&mut self, registry: &Registry);
}

/// The core's loop and the sessions it relays.
struct Core {
    poll: mio::Poll,
    inbox: mpsc::Receiver<Command>,
    slots: Vec<Option<(u64, Box<dyn Parked>)>>,
    free: Vec<usize>,
    keys: HashMap<u64, usize>,
    scratch: Vec<u8>,
}

impl Core {
    fn run(&mut self, link: &Link) -> std::io::Result<()> {
        let mut events = Events::with_capacity(256);
        let result = loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            for event in &events {
                if event.token() == WAKE {
                    continue;
                }
                let slot = event.token().0 / 2;
                let Some((_, session)) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                let closed = event.is_read_closed() || event.is_error();
                if event.is_readable() || closed {
                    session.readable(event.token().0 % 2 == 0, closed);
                }
                if !session.drive(self.poll.registry(), slot, &mut self.scratch) {
                    self.give_back(slot);
                }
            }
            while let Ok(command) = self.inbox.try_recv() {
                match command {
                    Command::Lend(key, session) => self.adopt(key, session),
                    Command::Recall(key) => {
                        if let Some(slot) = self.keys.get(&key).copied() {
                            self.give_back(slot);
                        }
                    }
                }
            }
            if link.stop.load(Ordering::Acquire) {
                break Ok(());
            }
        };
        // Every session goes back to its task (dropping one gives it back).
        for slot in 0..self.slots.len() {
            self.give_back(slot);
        }
        result
    }

    /// Registers a lent session and relays what it already has.
    fn adopt(&mut self, key: u64, mut session: Box<dyn Parked>) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = session.register(self.poll.registry(), slot) {
            tracing::debug!(error = %e, "could not register a lent session; given back");
            session.deregister(self.poll.registry());
            self.free.push(slot);
            return;
        }
        let keep = session.drive(self.poll.registry(), slot, &mut self.scratch);
        self.slots[slot] = Some((key, session));
        self.keys.insert(key, slot);
        if !keep {
            self.give_back(slot);
        }
    }

    /// Gives the session in `slot` back to its task.
    fn give_back(&mut self, slot: usize) {
        if let Some((key, mut session)) = self.slots.get_mut(slot).and_then(Option::take) {
            session.deregister(self.poll.registry());
            self.keys.remove(&key);
            self.free.push(slot);
        }
    }
}

/// Where a lent session comes back to its task.
struct ReturnSlot<H> {
    back: Mutex<Back<H>>,
    returned: Condvar,
}

struct Back<H> {
    parts: Option<(Lent, H)>,
    waker: Option<Waker>,
}

impl<H> ReturnSlot<H> {
    fn new() -> Self {
        ReturnSlot {
            back: Mutex::new(Back {
                parts: None,
                waker: None,
            }),
            returned: Condvar::new(),
        }
    }

    fn put(&self, parts: (Lent, H)) {
        let waker = {
            let mut back = self.back.lock().unwrap_or_else(PoisonError::into_inner);
            back.parts = Some(parts);
            back.waker.take()
        };
        self.returned.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<(Lent, H)> {
        let mut back = self.back.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(parts) = back.parts.take() {
            return Poll::Ready(parts);
        }
        if !back.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            back.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits (blocking) up to `wait` for the session to come back.
    fn wait_take(&self, wait: Duration) -> Option<(Lent, H)> {
        let back = self.back.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut back, _) = self
            .returned
            .wait_timeout_while(back, wait, |b| b.parts.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        back.parts.take()
    }
}

/// A lent session with its hook; dropping it gives both back to the task.
struct ParkedSession<H> {
    parts: Option<(Lent, H)>,
    slot: Arc<ReturnSlot<H>>,
    client: Watch,
    upstream: Watch,
    /// The statement cycles `plain_from_upstream` counts (a lent session has no use for them).
    cycles: u32,
}

/// What the core knows of one of a lent session's sockets between events.
struct Watch {
    /// It may have more to read (it was readable and has not been read dry since).
    ready: bool,
    /// Its peer has shut it down (or it failed): a short read no longer means that it is
    /// dry, since no new event will come for the end still to be read.
    closed: bool,
    /// Registered for writable events (only while something waits to be written to it).
    writable: bool,
}

impl Watch {
    fn new() -> Self {
        Watch {
            ready: true,
            closed: false,
            writable: false,
        }
    }

    /// Reads what `socket` has into `buf` if it may have something: Some(true) when bytes
    /// came, Some(false) when none did, None when it is closed or failed.
    fn read(
        &mut self,
        socket: &PlainSocket,
        buf: &mut BytesMut,
        scratch: &mut [u8],
    ) -> Option<bool> {
        if !self.ready {
            return Some(false);
        }
        match read_into(socket, buf, scratch) {
            Read::Bytes { more } => {
                self.ready = more || self.closed;
                Some(true)
            }
            Read::Dry => {
                self.ready = false;
                Some(false)
            }
            Read::Over => None,
        }
    }

    /// Asks for writable events on `socket` (registered as `token`) only while `queue` holds
    /// something (as PgBouncer does): a Unix socket would otherwise wake the core each time
    /// the server reads from it. False when the registration failed.
    fn watch(
        &mut self,
        registry: &Registry,
        socket: &PlainSocket,
        token: Token,
        queue: &BytesMut,
    ) -> bool {
        let want = !queue.is_empty();
        if want == self.writable {
            return true;
        }
        self.writable = want;
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry
            .reregister(&mut SourceFd(&socket.raw_fd()), token, interest)
            .is_ok()
    }
}

impl<H> Drop for ParkedSession<H> {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            self.slot.put(parts);
        }
    }
}

/// What reading a socket gave.
enum Read {
    /// Bytes, and maybe more (the read filled the scratch buffer).
    Bytes { more: bool },
    /// Nothing more for now.
    Dry,
    /// Closed or failed: the task's paths deal with it.
    Over,
}

fn read_into(socket: &PlainSocket, buf: &mut BytesMut, scratch: &mut [u8]) -> Read {
    loop {
        return match socket.read(scratch) {
            Ok(0) => Read::Over,
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                Read::Bytes {
                    more: n == scratch.len(),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::Dry,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => Read::Over,
        };
    }
}

/// Writes what `queue` holds until it is empty or the socket full; false when the socket
/// failed (the task's paths deal with it).
fn write_out(socket: &PlainSocket, queue: &mut BytesMut) -> bool {
    while !queue.is_empty() {
        match socket.write(queue) {
            Ok(0) => return false,
            Ok(n) => super::consume(queue, n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

impl<H: SessionHook> Parked for ParkedSession<H> {
    fn register(&mut self, registry: &Registry, slot: usize) -> std::io::Result<()> {
        let Some((lent, _)) = self.parts.as_ref() else {
            return Ok(());
        };
        registry.register(
            &mut SourceFd(&lent.client.raw_fd()),
            Token(2 * slot),
            Interest::READABLE,
        )?;
        registry.register(
            &mut SourceFd(&lent.upstream.raw_fd()),
            Token(2 * slot + 1),
            Interest::READABLE,
        )
    }

    fn readable(&mut self, client: bool, closed: bool) {
        let side = if client {
            &mut self.client
        } else {
            &mut self.upstream
        };
        side.ready = true;
        side.closed |= closed;
    }

    fn drive(&mut self, registry: &Registry, slot: usize, scratch: &mut [u8]) -> bool {
        let Some((l, hook)) = self.parts.as_mut() else {
            return false;
        };
        loop {
            let plain = plain_from_client(
                &mut l.client_in,
                &mut l.to_upstream,
                &mut l.to_upstream_grew,
                l.client_limit,
                &mut l.state,
                hook,
            );
            if !matches!(plain, Ok(true)) {
                return false;
            }
            let plain = plain_from_upstream(
                &mut l.upstream_in,
                &mut l.to_client,
                &mut l.to_client_grew,
                &mut l.state,
                hook,
                &mut self.cycles,
            );
            if !matches!(plain, Ok(true)) {
                return false;
            }
            // Reads first: all input already there is handled, and its output coalesced,
            // before anything is written.
            if l.to_upstream.len() < HIGH_WATER {
                match self.client.read(&l.client, &mut l.client_in, scratch) {
                    Some(true) => continue,
                    Some(false) => {}
                    None => return false,
                }
            }
            if l.to_client.len() < HIGH_WATER {
                match self.upstream.read(&l.upstream, &mut l.upstream_in, scratch) {
                    Some(true) => continue,
                    Some(false) => {}
                    None => return false,
                }
            }
            if !write_out(&l.client, &mut l.to_client)
                || !write_out(&l.upstream, &mut l.to_upstream)
            {
                return false;
            }
            shed(&mut l.to_client, &mut l.to_client_grew);
            shed(&mut l.to_upstream, &mut l.to_upstream_grew);
            // Only a read held back by a full queue can have more to do now.
            let unblocked = (self.client.ready && l.to_upstream.len() < HIGH_WATER)
                || (self.upstream.ready && l.to_client.len() < HIGH_WATER);
            if !unblocked {
                break;
            }
        }
        self.client
            .watch(registry, &l.client, Token(2 * slot), &l.to_client)
            && self
                .upstream
                .watch(registry, &l.upstream, Token(2 * slot + 1), &l.to_upstream)
    }

    fn deregister(&mut self, registry: &Registry) {
        if let Some((lent, _)) = self.parts.as_ref() {
            // Either may not be registered (a failed `register`): nothing to undo then.
            let _ = registry.deregister(&mut SourceFd(&lent.client.raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&lent.upstream.raw_fd()));
        }
    }
}

/// Lends the session to `core` until something needs its task again, then takes it back:
/// returns the hook, with `io` whole again. Returns at once (nothing lent) when the session is
/// not on the lean path or not lendable, or when the core has stopped.
pub(crate) async fn park<H: SessionHook + 'static>(
    core: &CoreHandle,
    io: &mut SessionIo,
    hook: H,
) -> Result<H> {
    let Some(lent) = io.lend()? else {
        return Ok(hook);
    };
    let slot = Arc::new(ReturnSlot::new());
    let key = core.link.next_key.fetch_add(1, Ordering::Relaxed);
    let session = Box::new(ParkedSession {
        parts: Some((lent, hook)),
        slot: slot.clone(),
        client: Watch::new(),
        upstream: Watch::new(),
        cycles: 0,
    });
    // A core that has stopped drops the command, which gives the session back at once.
    if core.link.commands.send(Command::Lend(key, session)).is_ok() {
        if let Err(e) = core.link.waker.wake() {
            tracing::warn!(error = %e, "could not wake the relay core");
        }
    }
    let mut recall = Recall {
        core,
        key,
        slot: &slot,
        io: Some(io),
    };
    let (lent, hook) = std::future::poll_fn(|cx| slot.poll_take(cx)).await;
    if let Some(io) = recall.io.take() {
        io.take_back(lent)?;
    }
    Ok(hook)
}

/// While a session is lent: if its task drops the `park` future (the cut, an abort), the
/// session is recalled and put back into `io`, so that the task's error path finds it whole.
struct Recall<'a, H> {
    core: &'a CoreHandle,
    key: u64,
    slot: &'a ReturnSlot<H>,
    io: Option<&'a mut SessionIo>,
}

impl<H> Drop for Recall<'_, H> {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else {
            return;
        };
        let asked = self
            .core
            .link
            .commands
            .send(Command::Recall(self.key))
            .is_ok()
            && self.core.link.waker.wake().is_ok();
        // A core that cannot be asked has stopped, and given every session back.
        let wait = if asked { RECALL_WAIT } else { Duration::ZERO };
        let Some((lent, _hook)) = self.slot.wait_take(wait) else {
            tracing::warn!("a relay core did not give a session back in time; it is closed");
            return;
        };
        // Registered again only where a runtime still runs (not while it shuts down).
        if tokio::runtime::Handle::try_current().is_ok() {
            if let Err(e) = io.take_back(lent) {
                tracing::debug!(error = %e, "could not take a session back from the relay core");
            }
        }
    }
}
