//! A session's I/O: one owner of both the client and the upstream connection. `SessionIo` pumps
//! bytes both ways without ever blocking one direction on the other (reads and writes of both
//! sockets in one `select!`), cuts complete frames out, and coalesces writes: a queue is
//! written only once every complete message already read has been handled. `relay` drives a
//! `SessionHook` with one event per message, except that a DataRow or CopyData larger than
//! `STREAM_OVER` is streamed through as its bytes arrive (no hook sees it, nothing needs to):
//! memory stays bounded by the queues' high-water mark, whatever the message size. Other
//! messages over `BUDGET_OVER` bytes, either way, are buffered whole within the `ClientBudget`
//! shared by all sessions, taken as their bytes arrive (`SessionHold`); a large client message
//! must arrive within `PARTIAL_MESSAGE_TIMEOUT`.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::error::{ProxyError, Result};
use crate::net::frame::{peek_len_within, Direction, Frame, MAX_CLIENT_MESSAGE};
use crate::net::messages::{client_tag, error_response};
use crate::net::stream::{PgReadHalf, PgStream, PgWriteHalf};
use crate::session::budget::{ClientBudget, SessionHold, BUDGET_OVER};
use crate::session::state::SessionState;
pub use crate::session::streaming::STREAM_OVER;
use crate::session::streaming::{move_streamed, streamed_len};

/// Past this many bytes queued for a peer, the relay stops reading from the other side
/// (back-pressure instead of unbounded buffering).
pub(super) const HIGH_WATER: usize = 256 * 1024;
/// Free space ensured in a read buffer before each read.
const READ_CHUNK: usize = 32 * 1024;

/// A client message that takes budget (over `BUDGET_OVER` bytes) must arrive whole within this
/// time from its header, and a server message that does must be read by the client within it,
/// or the session ends (FATAL 57014). Postgres itself would wait, but the budget is shared:
/// without a deadline a client that stops mid-message, or stops reading, holds its part of it
/// for as long as it likes. 60 s is Postgres' authentication_timeout, the one deadline it puts
/// on a client that stalls; at that pace even a message of the largest size one session may
/// hold (64 MiB by default) needs only about 1 MiB/s.
pub const PARTIAL_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A read buffer or write queue whose allocation grew past this for a large message is
/// replaced by a small one once that message is gone: a `BytesMut` keeps (and reuses) its
/// largest allocation, which would keep the message's memory resident for the rest of the
/// session, outside any budget.
const SHED_OVER: usize = 4 * HIGH_WATER;

/// What happened next on a session.
#[derive(Debug)]
pub enum Event {
    /// A complete message from the client.
    Client(Frame),
    /// A complete message from the upstream.
    Server(Frame),
    /// The client closed its connection (everything queued for the upstream was written).
    ClientClosed,
    /// The upstream closed its connection (everything queued for the client was written).
    UpstreamClosed,
}

/// Both connections of a session, their buffers, and the session state.
pub struct SessionIo {
    client_rd: PgReadHalf,
    client_wr: PgWriteHalf,
    upstream_rd: PgReadHalf,
    upstream_wr: PgWriteHalf,
    client_in: BytesMut,
    upstream_in: BytesMut,
    to_client: BytesMut,
    to_upstream: BytesMut,
    client_flush: bool,
    upstream_flush: bool,
    client_eof: bool,
    upstream_eof: bool,
    /// Bytes of a streamed client message not yet moved to `to_upstream`.
    client_streaming: usize,
    /// Bytes of a streamed upstream message not yet moved to `to_client`.
    upstream_streaming: usize,
    /// The largest client message accepted now (smaller during authentication).
    client_limit: usize,
    /// The budget this session's large messages hold.
    hold: SessionHold,
    /// Bytes the next read from the client may bring (the budget taken for a large message
    /// ahead of its bytes), and likewise from the upstream.
    client_room: usize,
    upstream_room: usize,
    /// When the large client message being received must be complete, and its size.
    client_deadline: Option<(Instant, usize)>,
    /// When the client must have read a large server message queued for it.
    unread_deadline: Option<Instant>,
    /// A write queue held a large message: replace its allocation once it is empty.
    to_client_grew: bool,
    to_upstream_grew: bool,
    /// Which socket's readiness woke the session, for the lean path.
    wakes: lean::Wakes,
    /// Statement cycles relayed in a row by the current lean stretch (see `relay_lean_until`).
    lean_cycles: u32,
    /// The current lean stretch has relayed a message.
    lean_moved: bool,
    pub(super) state: SessionState,
}

impl SessionIo {
    /// Takes over both connections; `client_in` holds client bytes already read. Large
    /// messages are buffered within `budget`.
    pub fn new(
        client: PgStream,
        upstream: PgStream,
        client_in: BytesMut,
        state: SessionState,
        budget: ClientBudget,
    ) -> Self {
        let (client_rd, client_wr) = client.split();
        let (upstream_rd, upstream_wr) = upstream.split();
        SessionIo {
            client_rd,
            client_wr,
            upstream_rd,
            upstream_wr,
            client_in,
            upstream_in: BytesMut::with_capacity(READ_CHUNK),
            to_client: BytesMut::with_capacity(READ_CHUNK),
            to_upstream: BytesMut::with_capacity(READ_CHUNK),
            client_flush: false,
            upstream_flush: false,
            client_eof: false,
            upstream_eof: false,
            client_streaming: 0,
            upstream_streaming: 0,
            client_limit: MAX_CLIENT_MESSAGE,
            hold: SessionHold::new(budget),
            client_room: usize::MAX,
            upstream_room: usize::MAX,
            client_deadline: None,
            unread_deadline: None,
            to_client_grew: false,
            to_upstream_grew: false,
            wakes: lean::Wakes::default(),
            lean_cycles: 0,
            lean_moved: false,
            state,
        }
    }

    /// Sets the largest length field a client message may declare (until set again).
    pub fn set_client_message_limit(&mut self, limit: usize) {
        self.client_limit = limit;
    }

    /// The session state.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The session state, mutable.
    pub fn state_mut(&mut self) -> &mut SessionState {
        &mut self.state
    }

    /// Queues a message for the upstream on the relay path: a Query, Sync or FunctionCall
    /// counts towards the ReadyForQuery messages the client will be relayed.
    pub fn send_upstream(&mut self, frame: &Frame) {
        self.state
            .on_relayed_upstream(client_tag::expects_ready(frame.tag()));
        self.send_upstream_raw(frame.as_bytes());
    }

    /// Queues a message of the proxy's own for the upstream; its responses are read with
    /// `recv_upstream`, never relayed.
    pub fn send_private(&mut self, frame: &Frame) {
        self.send_upstream_raw(frame.as_bytes());
    }

    /// Queues raw bytes for the upstream (a StartupMessage).
    pub(crate) fn send_upstream_raw(&mut self, bytes: &[u8]) {
        self.to_upstream.extend_from_slice(bytes);
        self.to_upstream_grew |= self.to_upstream.len() > SHED_OVER;
    }

    /// Queues a message for the client.
    pub fn send_client(&mut self, frame: &Frame) {
        self.to_client.extend_from_slice(frame.as_bytes());
        self.to_client_grew |= self.to_client.len() > SHED_OVER;
    }

    /// Waits for the next message from either side, writing queued bytes meanwhile.
    pub async fn next_event(&mut self) -> Result<Event> {
        // The messages handed out last have been handled.
        self.hold.handled(Direction::FromClient);
        self.hold.handled(Direction::FromUpstream);
        loop {
            self.stream_through();
            if self.client_streaming == 0 && self.to_upstream.len() < HIGH_WATER {
                if let Some(frame) = self.take(Direction::FromClient, true)? {
                    return Ok(Event::Client(frame));
                }
                self.client_streaming = streamed_len(&self.client_in, Direction::FromClient)?;
                if self.client_streaming > 0 {
                    continue;
                }
            }
            if self.upstream_streaming == 0 && self.to_client.len() < HIGH_WATER {
                if let Some(frame) = self.take(Direction::FromUpstream, true)? {
                    return Ok(Event::Server(frame));
                }
                self.upstream_streaming = streamed_len(&self.upstream_in, Direction::FromUpstream)?;
                if self.upstream_streaming > 0 {
                    continue;
                }
            }
            if self.client_eof && self.upstream_drained() {
                return Ok(Event::ClientClosed);
            }
            if self.upstream_eof && self.client_drained() {
                return Ok(Event::UpstreamClosed);
            }
            let read_client = self.to_upstream.len() < HIGH_WATER;
            let read_upstream = self.to_client.len() < HIGH_WATER;
            self.pump(read_client, read_upstream).await?;
        }
    }

    /// Relays upstream messages to the client until every ReadyForQuery owed for relayed
    /// messages has arrived and been written to the client. `keep` sees each message first
    /// and returns false to drop it. Afterwards the upstream is idle: an interceptor may run
    /// private queries.
    pub async fn relay_pending(
        &mut self,
        mut keep: impl FnMut(&Frame) -> bool + Send,
    ) -> Result<()> {
        loop {
            // A message being streamed to the client is finished first: frames start after it.
            self.stream_through();
            while self.upstream_streaming == 0 && self.state.pending_ready() > 0 {
                let Some(frame) = self.take(Direction::FromUpstream, true)? else {
                    self.upstream_streaming =
                        streamed_len(&self.upstream_in, Direction::FromUpstream)?;
                    break;
                };
                self.state.on_server(&frame)?;
                if keep(&frame) {
                    self.send_client(&frame);
                }
                self.hold.handled(Direction::FromUpstream);
            }
            let owed = self.state.pending_ready() > 0 || self.upstream_streaming > 0;
            if !owed && self.client_drained() && self.upstream_drained() {
                return Ok(());
            }
            if self.upstream_eof && owed {
                return Err(ProxyError::UpstreamProtocol(
                    "upstream closed the connection mid-response".into(),
                ));
            }
            let read_upstream = owed && self.to_client.len() < HIGH_WATER;
            self.pump(false, read_upstream).await?;
        }
    }

    /// Reads the next upstream message for the proxy itself (not relayed, not tracked),
    /// writing queued bytes meanwhile.
    pub async fn recv_upstream(&mut self) -> Result<Frame> {
        // The caller has handled the message this returned last.
        self.hold.handled(Direction::FromUpstream);
        loop {
            // Anything still being streamed to the client comes before the proxy's own answers.
            self.stream_through();
            if self.upstream_streaming == 0 {
                // While responses are owed to the client, a large DataRow or CopyData is theirs
                // and is streamed to them as in `next_event`; the proxy's own are read whole.
                let owed = self.state.pending_ready() > 0;
                if let Some(frame) = self.take(Direction::FromUpstream, owed)? {
                    return Ok(frame);
                }
                if owed {
                    self.upstream_streaming =
                        streamed_len(&self.upstream_in, Direction::FromUpstream)?;
                    if self.upstream_streaming > 0 {
                        continue;
                    }
                }
            }
            if self.upstream_eof {
                return Err(ProxyError::UpstreamProtocol(
                    "upstream closed the connection".into(),
                ));
            }
            let read = self.upstream_streaming == 0 || self.to_client.len() < HIGH_WATER;
            self.pump(false, read).await?;
        }
    }

    /// Writes everything queued for both peers.
    pub async fn flush(&mut self) -> Result<()> {
        while !(self.client_drained() && self.upstream_drained()) {
            self.pump(false, false).await?;
        }
        Ok(())
    }

    /// Takes the message at the head of `direction`'s read buffer when it is complete.
    /// Otherwise, unless it is to be streamed (`streamable` and a DataRow or CopyData over
    /// `STREAM_OVER`, which the caller then streams), it is to be buffered whole: a large one
    /// gets room for its next bytes from the budget, and the next read is limited to that.
    fn take(&mut self, direction: Direction, streamable: bool) -> Result<Option<Frame>> {
        let (buf, limit, room) = match direction {
            Direction::FromClient => (
                &mut self.client_in,
                self.client_limit,
                &mut self.client_room,
            ),
            Direction::FromUpstream => (
                &mut self.upstream_in,
                i32::MAX as usize,
                &mut self.upstream_room,
            ),
        };
        *room = usize::MAX;
        let Some(total) = peek_len_within(buf, direction, limit)? else {
            return Ok(None);
        };
        if buf.len() >= total {
            let frame = Frame::from_encoded(buf.split_to(total).freeze());
            if total > BUDGET_OVER {
                // The frame keeps the large allocation; the buffer starts afresh.
                let mut fresh = BytesMut::with_capacity(READ_CHUNK.max(buf.len()));
                fresh.extend_from_slice(buf);
                *buf = fresh;
            }
            self.hold.took(direction);
            if direction == Direction::FromClient {
                self.client_deadline = None;
            }
            return Ok(Some(frame));
        }
        if streamable && streamed_len(buf, direction)? > 0 {
            // Streamed after all (its header was first seen by a private read): whatever
            // budget it took goes back as a handled message's does.
            self.hold.took(direction);
            return Ok(None);
        }
        let buffered = buf.len();
        *room = self.hold.room(direction, total, buffered)?;
        // A client message that takes budget gets the deadline (see PARTIAL_MESSAGE_TIMEOUT).
        if *room != usize::MAX
            && direction == Direction::FromClient
            && self.client_deadline.is_none()
        {
            self.client_deadline = Some((Instant::now() + PARTIAL_MESSAGE_TIMEOUT, total));
        }
        Ok(None)
    }

    /// Sends a FATAL ErrorResponse for `err` to the client and writes it out (best effort).
    pub async fn send_fatal(&mut self, err: &ProxyError) {
        self.to_upstream.clear();
        self.upstream_flush = false;
        self.send_client(&error_response::fatal(err));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.flush()).await;
    }

    /// Moves the bytes of messages being streamed from the read buffers to the write queues,
    /// as far as the queues' high-water mark allows.
    fn stream_through(&mut self) {
        move_streamed(
            &mut self.client_in,
            &mut self.to_upstream,
            &mut self.client_streaming,
        );
        move_streamed(
            &mut self.upstream_in,
            &mut self.to_client,
            &mut self.upstream_streaming,
        );
    }

    fn client_drained(&self) -> bool {
        (self.to_client.is_empty() && !self.client_flush) || self.client_eof
    }

    fn upstream_drained(&self) -> bool {
        (self.to_upstream.is_empty() && !self.upstream_flush) || self.upstream_eof
    }

    /// One round of I/O: whichever of the enabled reads and the pending writes is ready first.
    /// Reads come first (biased) so that all input already available is handled, and its
    /// output coalesced, before anything is written.
    async fn pump(&mut self, read_client: bool, read_upstream: bool) -> Result<()> {
        let read_client = read_client && !self.client_eof;
        let read_upstream = read_upstream && !self.upstream_eof;
        let write_client = !self.client_drained();
        let write_upstream = !self.upstream_drained();
        if !(read_client || read_upstream || write_client || write_upstream) {
            return Err(ProxyError::UpstreamProtocol(
                "session stalled: nothing to read or write".into(),
            ));
        }
        self.release_drained();
        reserve(&mut self.client_in, self.client_room);
        reserve(&mut self.upstream_in, self.upstream_room);
        let mut client_in = (&mut self.client_in).limit(self.client_room);
        let mut upstream_in = (&mut self.upstream_in).limit(self.upstream_room);
        let incomplete = self.client_deadline;
        let unread = self.unread_deadline;
        tokio::select! {
            biased;
            read = self.client_rd.read_buf(&mut client_in), if read_client => {
                if !matches!(read, Ok(n) if n > 0) {
                    self.client_eof = true;
                }
            }
            read = self.upstream_rd.read_buf(&mut upstream_in), if read_upstream => {
                match read {
                    Ok(0) => self.upstream_eof = true,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream read failed");
                        self.upstream_eof = true;
                    }
                }
            }
            written = write_some(&mut self.client_wr, &mut self.to_client, &mut self.client_flush), if write_client => {
                if let Err(e) = written {
                    // The client is gone: nothing more can be delivered to it.
                    tracing::debug!(error = %e, "client write failed");
                    self.client_eof = true;
                    self.to_client.clear();
                    self.client_flush = false;
                }
                shed(&mut self.to_client, &mut self.to_client_grew);
            }
            written = write_some(&mut self.upstream_wr, &mut self.to_upstream, &mut self.upstream_flush), if write_upstream => {
                written?;
                shed(&mut self.to_upstream, &mut self.to_upstream_grew);
            }
            () = expiry(incomplete.map(|(at, _)| at)), if incomplete.is_some() && read_client => {
                return Err(ProxyError::MessageTimeout {
                    size: incomplete.map_or(0, |(_, size)| size),
                    received: self.client_in.len(),
                    after: PARTIAL_MESSAGE_TIMEOUT,
                });
            }
            () = expiry(unread), if unread.is_some() && write_client => {
                return Err(ProxyError::UnreadTimeout {
                    queued: self.to_client.len(),
                    after: PARTIAL_MESSAGE_TIMEOUT,
                });
            }
        }
        Ok(())
    }

    /// Gives back the budget of relayed copies now written out (down to the high-water mark).
    /// A large server message's copy that the client does not read holds budget too, so it
    /// gets the same deadline as a client message that does not arrive.
    fn release_drained(&mut self) {
        if self.to_upstream.len() < HIGH_WATER {
            self.hold.drained(Direction::FromClient);
        }
        if self.to_client.len() < HIGH_WATER {
            self.hold.drained(Direction::FromUpstream);
            self.unread_deadline = None;
        } else if self.unread_deadline.is_none() && self.hold.draining(Direction::FromUpstream) {
            self.unread_deadline = Some(Instant::now() + PARTIAL_MESSAGE_TIMEOUT);
        }
    }
}

/// Completes at `deadline`; never without one.
async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Makes room for the next read: `room` when a large message limits it, else a read chunk.
fn reserve(buf: &mut BytesMut, room: usize) {
    if room != usize::MAX {
        buf.reserve(room);
    } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Replaces an emptied write queue that held a large message by a small one (see `SHED_OVER`).
fn shed(queue: &mut BytesMut, grew: &mut bool) {
    if *grew && queue.is_empty() {
        *queue = BytesMut::with_capacity(READ_CHUNK);
        *grew = false;
    }
}

/// Writes some of `buf`, then flushes once it is empty (a no-op on plain TCP; it pushes out
/// TLS records). Cancel-safe: progress is recorded before each await point.
/// Drops the first `n` bytes of a buffer: all of them, usually, and then the buffer starts over
/// where its allocation begins (a clear, cheaper than an advance).
#[inline(always)]
fn consume(buf: &mut BytesMut, n: usize) {
    if n == buf.len() {
        buf.clear();
    } else {
        buf.advance(n);
    }
}

async fn write_some<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &mut BytesMut,
    needs_flush: &mut bool,
) -> std::io::Result<()> {
    if !buf.is_empty() {
        let n = wr.write(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        consume(buf, n);
        *needs_flush = true;
    }
    if buf.is_empty() && *needs_flush {
        wr.flush().await?;
        *needs_flush = false;
    }
    Ok(())
}

#[path = "lean.rs"]
mod lean;

#[path = "relay_core.rs"]
pub mod relay_core;

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
