//! A session's I/O: one owner of both the client and the upstream connection. `SessionIo` pumps
//! bytes both ways without ever blocking one direction on the other (reads and writes of both
//! sockets in one `select!`), cuts complete frames out, and coalesces writes: a queue is
//! written only once every complete message already read has been handled. `relay` drives a
//! `SessionHook` with one event per message, except that a DataRow or CopyData larger than
//! `STREAM_OVER` is streamed through as its bytes arrive (no hook sees it, nothing needs to):
//! memory stays bounded by the queues' high-water mark, whatever the message size. Other
//! client messages over `BUDGET_OVER` bytes are buffered whole only once their size fits in the
//! `ClientBudget` shared by all sessions.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ProxyError, Result};
use crate::net::frame::{peek_len_within, take_frame, Direction, Frame, MAX_CLIENT_MESSAGE};
use crate::net::messages::{client_tag, error_response};
use crate::net::stream::{PgReadHalf, PgStream, PgWriteHalf};
use crate::session::budget::{ClientBudget, Reservation};
use crate::session::state::SessionState;
pub use crate::session::streaming::STREAM_OVER;
use crate::session::streaming::{move_streamed, streamed_len};

/// Past this many bytes queued for a peer, the relay stops reading from the other side
/// (back-pressure instead of unbounded buffering).
pub(super) const HIGH_WATER: usize = 256 * 1024;
/// Free space ensured in a read buffer before each read.
const READ_CHUNK: usize = 32 * 1024;

/// Client messages larger than this take their size from the `ClientBudget` before they are
/// buffered; smaller ones are bounded by the read chunk and the connection limit.
const BUDGET_OVER: usize = 64 * 1024;

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
    budget: ClientBudget,
    /// The budget held by the client message being buffered or last handed out.
    held: Option<Reservation>,
    pub(super) state: SessionState,
}

impl SessionIo {
    /// Takes over both connections; `client_in` holds client bytes already read. Large client
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
            budget,
            held: None,
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
        self.to_upstream.extend_from_slice(frame.as_bytes());
    }

    /// Queues a message of the proxy's own for the upstream; its responses are read with
    /// `recv_upstream`, never relayed.
    pub fn send_private(&mut self, frame: &Frame) {
        self.to_upstream.extend_from_slice(frame.as_bytes());
    }

    /// Queues raw bytes for the upstream (a StartupMessage).
    pub(crate) fn send_upstream_raw(&mut self, bytes: &[u8]) {
        self.to_upstream.extend_from_slice(bytes);
    }

    /// Queues a message for the client.
    pub fn send_client(&mut self, frame: &Frame) {
        self.to_client.extend_from_slice(frame.as_bytes());
    }

    /// Waits for the next message from either side, writing queued bytes meanwhile.
    pub async fn next_event(&mut self) -> Result<Event> {
        // The message handed out last has been handled.
        self.held = None;
        loop {
            self.stream_through();
            if self.client_streaming == 0 && self.to_upstream.len() < HIGH_WATER {
                self.admit_client_message()?;
                if let Some(frame) = take_frame(&mut self.client_in, Direction::FromClient)? {
                    return Ok(Event::Client(frame));
                }
                self.client_streaming = streamed_len(&self.client_in, Direction::FromClient)?;
                if self.client_streaming > 0 {
                    continue;
                }
            }
            if self.upstream_streaming == 0 && self.to_client.len() < HIGH_WATER {
                if let Some(frame) = take_frame(&mut self.upstream_in, Direction::FromUpstream)? {
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
                let Some(frame) = take_frame(&mut self.upstream_in, Direction::FromUpstream)?
                else {
                    break;
                };
                self.state.on_server(&frame)?;
                if keep(&frame) {
                    self.send_client(&frame);
                }
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
        loop {
            // Anything still being streamed to the client comes before the proxy's own answers.
            self.stream_through();
            if self.upstream_streaming == 0 {
                if let Some(frame) = take_frame(&mut self.upstream_in, Direction::FromUpstream)? {
                    return Ok(frame);
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

    /// Checks the client message whose header is at the head of `client_in` before its body
    /// is buffered: its length against the phase's limit, and, when it is buffered whole and
    /// large, that its size fits in the shared budget (then room for it is made at once, so
    /// the buffer does not grow by doubling).
    fn admit_client_message(&mut self) -> Result<()> {
        let Some(total) =
            peek_len_within(&self.client_in, Direction::FromClient, self.client_limit)?
        else {
            return Ok(());
        };
        if self.held.is_some()
            || total <= BUDGET_OVER
            || streamed_len(&self.client_in, Direction::FromClient)? > 0
        {
            return Ok(());
        }
        let Some(reservation) = self.budget.reserve(total) else {
            return Err(ProxyError::OutOfMemory {
                request: total,
                limit: self.budget.limit(),
            });
        };
        self.held = Some(reservation);
        self.client_in
            .reserve(total.saturating_sub(self.client_in.len()));
        Ok(())
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
        reserve(&mut self.client_in);
        reserve(&mut self.upstream_in);
        tokio::select! {
            biased;
            read = self.client_rd.read_buf(&mut self.client_in), if read_client => {
                if !matches!(read, Ok(n) if n > 0) {
                    self.client_eof = true;
                }
            }
            read = self.upstream_rd.read_buf(&mut self.upstream_in), if read_upstream => {
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
            }
            written = write_some(&mut self.upstream_wr, &mut self.to_upstream, &mut self.upstream_flush), if write_upstream => {
                written?;
            }
        }
        Ok(())
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Writes some of `buf`, then flushes once it is empty (a no-op on plain TCP; it pushes out
/// TLS records). Cancel-safe: progress is recorded before each await point.
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
        buf.advance(n);
        *needs_flush = true;
    }
    if buf.is_empty() && *needs_flush {
        wr.flush().await?;
        *needs_flush = false;
    }
    Ok(())
}
