//! The authentication exchange, relayed end to end between client and upstream until the
//! first ReadyForQuery; the proxy stores no passwords. Until then client messages are limited
//! as Postgres limits them (PG_MAX_AUTH_TOKEN_LENGTH).
//!
//! Channel binding: for a client over TLS that supports SCRAM channel binding, when the upstream
//! offers it over its own TLS link. The proxy hides SCRAM-SHA-256-PLUS (the binding would be to
//! the proxy's certificate, not the server's), so the client answers with the gs2 flag `y`,
//! which a server that does offer binding must reject as a downgrade. The flag cannot be
//! rewritten: the client-final-message repeats it (`c=eSws`) under the ClientProof. Only a
//! proxy that terminates SCRAM itself (holding the verifiers, as PgBouncer's auth_file does)
//! could bridge it; this one relays authentication, so it says how to avoid the combination.

use crate::error::{ProxyError, Result};
use crate::net::frame::{MAX_AUTH_MESSAGE, MAX_CLIENT_MESSAGE};
use crate::net::messages::error_response::Fields;
use crate::net::messages::{authentication, client_tag, server_tag};
use crate::session::io::{Event, SessionIo};

/// How the authentication exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// The first ReadyForQuery arrived: the session is open.
    Done,
    /// The upstream refused the client with an ErrorResponse of this SQLSTATE (queued for the
    /// client; the caller flushes it).
    Refused(String),
    /// A side closed the connection first.
    Closed,
}

/// Relays the authentication exchange until the first ReadyForQuery, until the upstream
/// refuses the client, or until a side closes. Until then client messages are limited as
/// Postgres limits them (PG_MAX_AUTH_TOKEN_LENGTH).
pub async fn authenticate(io: &mut SessionIo) -> Result<Authentication> {
    io.set_client_message_limit(MAX_AUTH_MESSAGE);
    let authenticated = relay_authentication(io).await;
    io.set_client_message_limit(MAX_CLIENT_MESSAGE);
    authenticated
}

async fn relay_authentication(io: &mut SessionIo) -> Result<Authentication> {
    // Set when the upstream offered SCRAM-SHA-256-PLUS and the client's SASLInitialResponse,
    // the next password message, is still to come.
    let mut binding_offered = false;
    loop {
        match io.next_event().await? {
            Event::Server(frame) => match frame.tag() {
                server_tag::AUTHENTICATION => {
                    binding_offered = authentication::offers_channel_binding(&frame)?;
                    let frame = authentication::without_channel_binding(frame)?;
                    io.send_client(&frame);
                }
                server_tag::READY_FOR_QUERY => {
                    io.state_mut().on_server(&frame)?;
                    io.send_client(&frame);
                    return Ok(Authentication::Done);
                }
                server_tag::ERROR_RESPONSE => {
                    let sqlstate = Fields::decode(&frame).sqlstate().unwrap_or("").to_owned();
                    // Queued, not flushed: the caller counts the refusal before the client
                    // can see it, so a client that reads its error sees the metric too.
                    io.send_client(&frame);
                    return Ok(Authentication::Refused(sqlstate));
                }
                _ => {
                    io.state_mut().on_server(&frame)?;
                    io.send_client(&frame);
                }
            },
            Event::Client(frame) if frame.tag() == client_tag::PASSWORD => {
                if std::mem::take(&mut binding_offered)
                    && authentication::gs2_flag(&frame) == Some(b'y')
                {
                    return Err(ProxyError::ChannelBinding);
                }
                io.send_private(&frame);
            }
            Event::Client(frame) => {
                return Err(ProxyError::ClientProtocol(format!(
                    "expected password response, got message type {}",
                    frame.tag()
                )))
            }
            Event::ClientClosed | Event::UpstreamClosed => {
                io.flush().await?;
                return Ok(Authentication::Closed);
            }
        }
    }
}
