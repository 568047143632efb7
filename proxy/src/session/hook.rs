//! The interception hook point. An `Interceptor` makes one `SessionHook` per client session;
//! the relay hands it every client and server message at a message boundary, together with
//! the session's I/O, so it can forward, rewrite, insert or drop messages and run private
//! queries on the upstream connection. `Passthrough` relays everything unchanged.
//!
//! What a hook can do with the `SessionIo` it is given:
//! - (a) rewrite: `send_upstream` a different or additional frame instead of the client's;
//! - (b) private queries: `relay_pending` first (every earlier response has then reached the
//!   client and the upstream is idle), then `send_private` + `recv_upstream` (simple or
//!   extended protocol, COPY FROM STDIN too) and consume the responses itself;
//! - (c) filter server messages in `on_server_message` (not calling `send_client` drops one);
//! - (d) add startup parameters to the StartupMessage sent upstream, in `upstream_startup`.

use std::future::Future;
use std::net::SocketAddr;

use crate::error::Result;
use crate::net::frame::Frame;
use crate::net::messages::client::ClientMessage;
use crate::net::messages::startup::StartupMessage;
use crate::session::io::SessionIo;
use crate::session::state::SessionState;

/// Who a new session is.
#[derive(Debug)]
pub struct SessionInfo<'a> {
    /// The proxy's session id.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's StartupMessage, as sent.
    pub startup: &'a StartupMessage,
}

/// Something that happened to a connection outside its statements (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Refused: `--max-connections` sessions were already open.
    TooManyConnections,
    /// Turned away at accept: too many connections not yet authenticated, from its source
    /// (`per_source`) or in all.
    Unauthenticated { per_source: bool },
    /// The upstream refused the startup; `authentication` when for the credentials (class 28).
    StartupRefused { authentication: bool },
    /// The upstream server could not be reached for a new session.
    UpstreamConnectFailed,
    /// The session ended because the client broke the wire protocol.
    ClientProtocolError,
}

/// Makes a hook for each session; shared by all sessions.
pub trait Interceptor: Send + Sync + 'static {
    /// The per-session hook.
    type Hook: SessionHook + 'static;

    /// Called once per session, before the upstream connection is opened.
    fn session(&self, info: &SessionInfo<'_>) -> Self::Hook;

    /// Told of refusals and connection-level errors; ignores them by default.
    fn connection_event(&self, _event: ConnectionEvent) {}
}

/// Sees a session's messages after authentication, one at a time, in order.
///
/// The relay's lean path (`SessionIo::relay_lean`) asks `client_plain` / `server_plain` first,
/// reading the message in place: a message the hook would relay unchanged, with no more to do
/// than the bookkeeping of `on_plain_client` / `on_plain_server`, is relayed without a `Frame`,
/// a decode or a call of the async handlers. Those two must then do exactly what
/// `on_client_message` / `on_server_message` would have done for that message besides relaying
/// it. Only these client messages are offered: Query (its body checked to end its SQL text
/// with a NUL), Describe (checked to decode), Bind, Execute, Sync and Flush; and server
/// messages no larger than `BUDGET_OVER`.
pub trait SessionHook: Send {
    /// Whether the client message with `tag` and `body` is relayed unchanged, with only the
    /// bookkeeping of `on_plain_client`. Must not change anything: on false, the message goes
    /// to `on_client_message`. The default (a hook that relays everything) says yes.
    fn client_plain(&self, _tag: u8, _body: &[u8], _state: &SessionState) -> bool {
        true
    }

    /// The bookkeeping of a client message `client_plain` accepted, before it is relayed.
    fn on_plain_client(&mut self, _tag: u8, _body: &[u8], _state: &SessionState) {}

    /// Whether the server message with `tag` and `body` is relayed unchanged, with only the
    /// bookkeeping of `on_plain_server`. Must not change anything: on false, the message goes
    /// to `on_server_message`.
    fn server_plain(&self, _tag: u8, _body: &[u8]) -> bool {
        true
    }

    /// The bookkeeping of a server message `server_plain` accepted, after the session state
    /// recorded it and before it is relayed.
    fn on_plain_server(&mut self, _tag: u8, _state: &mut SessionState) {}

    /// Adjusts the StartupMessage sent upstream (add parameters of the proxy's own).
    fn upstream_startup(&mut self, _startup: &mut StartupMessage) {}

    /// A complete client message and its typed view (decoded once by the relay). The default
    /// forwards it unchanged.
    fn on_client_message(
        &mut self,
        frame: &Frame,
        message: ClientMessage<'_>,
        io: &mut SessionIo,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = message;
        async move {
            io.send_upstream(frame);
            Ok(())
        }
    }

    /// A complete server message on the relay path (already recorded in the session state).
    /// The client closed its connection; what is queued for the upstream is written after
    /// this. The default does nothing.
    fn on_client_closed(&mut self, io: &mut SessionIo) -> impl Future<Output = Result<()>> + Send {
        let _ = io;
        async { Ok(()) }
    }

    /// The default relays it to the client unchanged.
    fn on_server_message(
        &mut self,
        frame: Frame,
        io: &mut SessionIo,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            io.send_client(&frame);
            Ok(())
        }
    }
}

/// The no-op interceptor: a transparent relay.
#[derive(Clone, Copy, Debug, Default)]
pub struct Passthrough;

impl Interceptor for Passthrough {
    type Hook = Passthrough;

    fn session(&self, _info: &SessionInfo<'_>) -> Passthrough {
        Passthrough
    }
}

impl SessionHook for Passthrough {}
