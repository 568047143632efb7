//! The relay loop: hands every message of an authenticated session to a `SessionHook`, one
//! event at a time, until either side closes or a protocol error ends it. Messages the hook
//! takes as plain go by the lean path (`SessionIo::relay_lean`); the rest, and every event,
//! by the full one here, inside the session's span.

use tracing::Instrument;

use crate::error::{ProxyError, Result};
use crate::net::messages::client::ClientMessage;
use crate::net::messages::client_tag;
use crate::session::hook::SessionHook;
use crate::session::io::relay_core::{self, CoreHandle};
use crate::session::io::{Event, SessionIo};
use crate::session::timing;

/// Relays a session after authentication, handing every message to `hook`, until either side
/// closes or a protocol error ends it. The full path runs inside `span` (the session's); the
/// lean path logs nothing and enters no span.
pub async fn relay<H: SessionHook>(
    io: &mut SessionIo,
    hook: &mut H,
    span: &tracing::Span,
) -> Result<()> {
    loop {
        io.relay_lean(hook).await?;
        if !full_step(io, hook).instrument(span.clone()).await? {
            return Ok(());
        }
    }
}

/// As `relay`, lending the session to the relay core whenever it has relayed
/// `core.park_after()` statement cycles in a row on the lean path (see `io::relay_core`); the
/// core gives it back at the first message or event that needs more than the lean path.
pub async fn relay_with_core<H: SessionHook + 'static>(
    io: &mut SessionIo,
    hook: H,
    span: &tracing::Span,
    core: &CoreHandle,
) -> Result<()> {
    let mut hook = hook;
    loop {
        if io.relay_lean_until(&mut hook, core.park_after()).await? {
            hook = relay_core::park(core, io, hook).await?;
            continue;
        }
        if !full_step(io, &mut hook).instrument(span.clone()).await? {
            return Ok(());
        }
    }
}

/// The next event, by the full path; false once the session has ended.
async fn full_step<H: SessionHook>(io: &mut SessionIo, hook: &mut H) -> Result<bool> {
    match io.next_event().await? {
        Event::Client(frame) => {
            let tag = frame.tag();
            if !client_tag::is_known(tag) {
                return Err(ProxyError::ClientProtocol(format!(
                    "invalid frontend message type {tag}"
                )));
            }
            let message = ClientMessage::decode(&frame)?;
            let terminate = matches!(message, ClientMessage::Terminate);
            if timing::opens_cycle(tag) {
                io.state.clock_mut().arrived();
            }
            io.state.handling(Some(tag));
            hook.on_client_message(&frame, message, io).await?;
            io.state.handling(None);
            if client_tag::expects_ready(tag) {
                io.state.clock_mut().handled_end_of_cycle();
            }
            if terminate {
                io.flush().await?;
                return Ok(false);
            }
        }
        Event::Server(frame) => {
            io.state.on_server(&frame)?;
            hook.on_server_message(frame, io).await?;
        }
        Event::ClientClosed => {
            hook.on_client_closed(io).await?;
            io.flush().await?;
            return Ok(false);
        }
        Event::UpstreamClosed => {
            io.flush().await?;
            return Ok(false);
        }
    }
    Ok(true)
}
