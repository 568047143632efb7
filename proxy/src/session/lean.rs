//! The relay's lean path: what a session costs when the hook has nothing to do. Messages are
//! framed in place in the read buffers; every complete one the hook takes as plain
//! (`SessionHook::client_plain` / `server_plain`) is recorded in the session state and its
//! bytes are queued for the other side with those of the messages around it, in one copy:
//! no `Frame`, no decode, no async handler, no span. Reads and writes are polled by hand, in
//! one `poll_fn`, as `pump` does them (reads first, so that replies are coalesced).
//!
//! Anything else ends the lean path and is left where it is for the full one (`next_event`
//! and the hook's handlers): a message the hook wants, one the lean path does not offer, one
//! over `BUDGET_OVER` bytes (budget, streaming), either side closing, and any state the full
//! path tracks (a large message arriving, streamed or draining, a deadline). So every byte
//! takes the same route through the session state as before, only faster.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::{consume, reserve, shed, write_some, SessionIo, HIGH_WATER, SHED_OVER};
use crate::error::Result;
use crate::net::frame::{peek_len_within, Direction};
use crate::net::messages::{client_tag, server_tag};
use crate::session::budget::BUDGET_OVER;
use crate::session::hook::SessionHook;
use crate::session::state::SessionState;
use crate::session::timing;

/// The waker the lean path gives one socket's reads: it notes that this socket woke the
/// session, then wakes its task. A wake-up then polls only the socket that has something (and,
/// after reading it, that socket again until it has no more): polling a socket whose waker is
/// still registered would only register it again, through tokio's readiness and its lock.
#[derive(Default)]
struct SideWake {
    woken: AtomicBool,
    /// The session's task (kept, not taken, by a wake: it is set again only if it changes).
    task: Mutex<Option<Waker>>,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A session's two read wakers (see `SideWake`).
pub(super) struct Wakes {
    client: Arc<SideWake>,
    upstream: Arc<SideWake>,
    client_waker: Waker,
    upstream_waker: Waker,
    /// The task both wake, as last set in them.
    task: Option<Waker>,
}

impl Default for Wakes {
    fn default() -> Self {
        let client = Arc::new(SideWake::default());
        let upstream = Arc::new(SideWake::default());
        Wakes {
            client_waker: Waker::from(client.clone()),
            upstream_waker: Waker::from(upstream.clone()),
            client,
            upstream,
            task: None,
        }
    }
}

impl Wakes {
    /// Every read is to be polled: its socket may hold another waker (the full path's), which
    /// would wake the task without saying which socket is ready.
    fn all(&self) {
        self.client.woken.store(true, Ordering::Relaxed);
        self.upstream.woken.store(true, Ordering::Relaxed);
    }

    /// Both wake `task` (a task's waker stays the same from one poll to the next: this is
    /// a comparison, but for the first poll).
    fn wake_to(&mut self, task: &Waker) {
        if self.task.as_ref().is_some_and(|t| t.will_wake(task)) {
            return;
        }
        self.task = Some(task.clone());
        for side in [&self.client, &self.upstream] {
            *side.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
        }
    }
}

/// The client messages the lean path offers to the hook: those of a statement's cycle that
/// no hook needs decoded beyond a name or the SQL text.
fn offered(tag: u8, body: &[u8]) -> bool {
    match tag {
        // Its SQL text ends with the body (as a well-formed Query's does); anything else is
        // the full path's to read, or to reject.
        client_tag::QUERY => {
            matches!(body.split_last(), Some((0, sql)) if memchr::memchr(0, sql).is_none())
        }
        // One that decodes (a target, then a name).
        client_tag::DESCRIBE => {
            matches!(body.split_first(), Some((b'S' | b'P', name)) if name.contains(&0))
        }
        client_tag::BIND | client_tag::EXECUTE | client_tag::SYNC | client_tag::FLUSH => true,
        _ => false,
    }
}

impl SessionIo {
    /// Relays the messages `hook` takes as plain, both ways, until one (or an event) needs
    /// the full path: `next_event` then returns it.
    pub async fn relay_lean<H: SessionHook>(&mut self, hook: &mut H) -> Result<()> {
        self.relay_lean_until(hook, u32::MAX).await.map(|_| ())
    }

    /// As `relay_lean`, but also returns (true) once `park_after` statement cycles have been
    /// relayed in a row, and at least one message (each lending follows progress on this
    /// path), with nothing else under way, when the session could be lent to the relay core
    /// (`lendable`).
    pub(crate) async fn relay_lean_until<H: SessionHook>(
        &mut self,
        hook: &mut H,
        park_after: u32,
    ) -> Result<bool> {
        self.wakes.all();
        self.lean_cycles = 0;
        self.lean_moved = false;
        std::future::poll_fn(|cx| self.poll_lean(cx, hook, park_after)).await
    }

    /// Nothing the full path tracks between messages is under way.
    pub(super) fn lean_ok(&self) -> bool {
        self.client_streaming == 0
            && self.upstream_streaming == 0
            && self.client_deadline.is_none()
            && self.unread_deadline.is_none()
            && self.client_room == usize::MAX
            && self.upstream_room == usize::MAX
            && !self.client_eof
            && !self.upstream_eof
            && self.hold.is_clear()
    }

    fn poll_lean<H: SessionHook>(
        &mut self,
        cx: &mut Context<'_>,
        hook: &mut H,
        park_after: u32,
    ) -> Poll<Result<bool>> {
        // Nothing in the loop below changes what `lean_ok` reads, but a closing socket, after
        // which it returns at once.
        if !self.lean_ok() {
            return Poll::Ready(Ok(false));
        }
        self.wakes.wake_to(cx.waker());
        loop {
            if !self.plain_from_client(hook)? || !self.plain_from_upstream(hook)? {
                return Poll::Ready(Ok(false));
            }
            if self.lean_cycles >= park_after && self.lean_moved && self.lendable() {
                return Poll::Ready(Ok(true));
            }
            // Reads first: all input already there is handled, and its output coalesced,
            // before anything is written.
            let read_client = self.to_upstream.len() < HIGH_WATER;
            if read_client && self.wakes.client.woken.swap(false, Ordering::Acquire) {
                reserve(&mut self.client_in, usize::MAX);
                let mut side = Context::from_waker(&self.wakes.client_waker);
                match pin!(self.client_rd.read_buf(&mut self.client_in)).poll(&mut side) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        // Read again (after handling it) until it has no more.
                        self.wakes.client.woken.store(true, Ordering::Relaxed);
                        continue;
                    }
                    Poll::Ready(_) => {
                        self.client_eof = true;
                        return Poll::Ready(Ok(false));
                    }
                    Poll::Pending => {}
                }
            }
            let read_upstream = self.to_client.len() < HIGH_WATER;
            if read_upstream && self.wakes.upstream.woken.swap(false, Ordering::Acquire) {
                reserve(&mut self.upstream_in, usize::MAX);
                let mut side = Context::from_waker(&self.wakes.upstream_waker);
                match pin!(self.upstream_rd.read_buf(&mut self.upstream_in)).poll(&mut side) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.wakes.upstream.woken.store(true, Ordering::Relaxed);
                        continue;
                    }
                    Poll::Ready(read) => {
                        if let Err(e) = read {
                            tracing::debug!(error = %e, "upstream read failed");
                        }
                        self.upstream_eof = true;
                        return Poll::Ready(Ok(false));
                    }
                    Poll::Pending => {}
                }
            }
            // Both reads are pending (their wakers registered): write until each queue is
            // empty or its socket full. Only a read that was held back by a full queue can
            // have more to do after that.
            while !self.client_drained() {
                let written = pin!(write_some(
                    &mut self.client_wr,
                    &mut self.to_client,
                    &mut self.client_flush
                ))
                .poll(cx);
                match written {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        // The client is gone: nothing more can be delivered to it.
                        tracing::debug!(error = %e, "client write failed");
                        self.client_eof = true;
                        self.to_client.clear();
                        self.client_flush = false;
                        return Poll::Ready(Ok(false));
                    }
                    Poll::Pending => break,
                }
            }
            shed(&mut self.to_client, &mut self.to_client_grew);
            while !self.upstream_drained() {
                let written = pin!(write_some(
                    &mut self.upstream_wr,
                    &mut self.to_upstream,
                    &mut self.upstream_flush
                ))
                .poll(cx);
                match written {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => break,
                }
            }
            shed(&mut self.to_upstream, &mut self.to_upstream_grew);
            let unblocked = (!read_client && self.to_upstream.len() < HIGH_WATER)
                || (!read_upstream && self.to_client.len() < HIGH_WATER);
            if !unblocked {
                return Poll::Pending;
            }
        }
    }

    /// Relays the complete client messages at the head of `client_in` that the hook takes as
    /// plain (see `plain_from_client`).
    fn plain_from_client<H: SessionHook>(&mut self, hook: &mut H) -> Result<bool> {
        let before = self.client_in.len();
        let plain = plain_from_client(
            &mut self.client_in,
            &mut self.to_upstream,
            &mut self.to_upstream_grew,
            self.client_limit,
            &mut self.state,
            hook,
        );
        self.lean_moved |= self.client_in.len() != before;
        plain
    }

    /// Relays the complete server messages at the head of `upstream_in` that the hook takes
    /// as plain (see `plain_from_upstream`).
    fn plain_from_upstream<H: SessionHook>(&mut self, hook: &mut H) -> Result<bool> {
        let before = self.upstream_in.len();
        let plain = plain_from_upstream(
            &mut self.upstream_in,
            &mut self.to_client,
            &mut self.to_client_grew,
            &mut self.state,
            hook,
            &mut self.lean_cycles,
        );
        self.lean_moved |= self.upstream_in.len() != before;
        plain
    }
}

/// Relays the complete client messages at the head of `input` that the hook takes as plain,
/// into `out`, as `relay` and `send_upstream` would one by one; false when the next one needs
/// the full path. `limit` is the largest client message accepted now. Shared by the lean path
/// and the relay core (`session::core`).
#[inline]
pub(super) fn plain_from_client<H: SessionHook>(
    input: &mut BytesMut,
    out: &mut BytesMut,
    out_grew: &mut bool,
    limit: usize,
    state: &mut SessionState,
    hook: &mut H,
) -> Result<bool> {
    let mut at = 0;
    let mut lean = true;
    while out.len() + at < HIGH_WATER {
        let rest = &input[at..];
        let Some(total) = peek_len_within(rest, Direction::FromClient, limit)? else {
            break;
        };
        if total > BUDGET_OVER {
            lean = false;
            break;
        }
        if rest.len() < total {
            break;
        }
        let (tag, body) = (rest[0], &rest[5..total]);
        if !offered(tag, body) || !hook.client_plain(tag, body, state) {
            lean = false;
            break;
        }
        if timing::opens_cycle(tag) {
            state.clock_mut().arrived();
        }
        hook.on_plain_client(tag, body, state);
        state.on_relayed(tag);
        if client_tag::expects_ready(tag) {
            state.clock_mut().handled_end_of_cycle();
        }
        at += total;
    }
    if at > 0 {
        out.extend_from_slice(&input[..at]);
        consume(input, at);
        *out_grew |= out.len() > SHED_OVER;
    }
    Ok(lean)
}

/// Relays the complete server messages at the head of `input` that the hook takes as plain,
/// into `out`, as `relay` and `send_client` would one by one, counting the ReadyForQuery
/// messages in `cycles`; false when the next one needs the full path.
#[inline]
pub(super) fn plain_from_upstream<H: SessionHook>(
    input: &mut BytesMut,
    out: &mut BytesMut,
    out_grew: &mut bool,
    state: &mut SessionState,
    hook: &mut H,
    cycles: &mut u32,
) -> Result<bool> {
    let mut at = 0;
    let mut lean = Ok(true);
    while out.len() + at < HIGH_WATER {
        let rest = &input[at..];
        let total = match peek_len_within(rest, Direction::FromUpstream, i32::MAX as usize) {
            Ok(Some(total)) => total,
            Ok(None) => break,
            Err(e) => {
                lean = Err(e);
                break;
            }
        };
        if total > BUDGET_OVER {
            lean = Ok(false);
            break;
        }
        if rest.len() < total {
            break;
        }
        let (tag, body) = (rest[0], &rest[5..total]);
        if !hook.server_plain(tag, body) {
            lean = Ok(false);
            break;
        }
        if let Err(e) = state.on_server_parts(tag, body) {
            lean = Err(e);
            break;
        }
        hook.on_plain_server(tag, state);
        if tag == server_tag::READY_FOR_QUERY {
            *cycles = cycles.saturating_add(1);
        }
        at += total;
    }
    // What came before an error is the client's as in the full path (where it was queued
    // message by message).
    if at > 0 {
        out.extend_from_slice(&input[..at]);
        consume(input, at);
        *out_grew |= out.len() > SHED_OVER;
    }
    lean
}
