//! The relay loop: hands every message of an authenticated session to a `SessionHook`, one
//! event at a time, until either side closes or a protocol error ends it.

use crate::error::{ProxyError, Result};
use crate::net::messages::client::ClientMessage;
use crate::net::messages::client_tag;
use crate::session::hook::SessionHook;
use crate::session::io::{Event, SessionIo};
use crate::session::timing;

/// Relays a session after authentication, handing every message to `hook`, until either side
/// closes or a protocol error ends it.
pub async fn relay<H: SessionHook>(io: &mut SessionIo, hook: &mut H) -> Result<()> {
    loop {
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
                    return Ok(());
                }
            }
            Event::Server(frame) => {
                io.state.on_server(&frame)?;
                hook.on_server_message(frame, io).await?;
            }
            Event::ClientClosed => {
                hook.on_client_closed(io).await?;
                io.flush().await?;
                return Ok(());
            }
            Event::UpstreamClosed => {
                io.flush().await?;
                return Ok(());
            }
        }
    }
}
