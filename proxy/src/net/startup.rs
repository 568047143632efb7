//! The opening of a client connection: the startup packet (answering SSLRequest, terminating
//! TLS when configured, declining GSSENCRequest, spotting CancelRequest), then the relay of the
//! authentication exchange end to end until the first ReadyForQuery.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{ProxyError, Result, UpstreamError};
use crate::net::frame::{take_startup_packet, MAX_AUTH_MESSAGE, MAX_CLIENT_MESSAGE};
use crate::net::messages::startup::{StartupMessage, StartupPacket};
use crate::net::messages::{authentication, client_tag, error_response, server_tag};
use crate::net::stream::PgStream;
use crate::session::io::{Event, SessionIo};

/// How a client opened its connection.
pub enum Opening {
    /// A session: the (possibly TLS) stream, its StartupMessage, and bytes read past it.
    Session {
        stream: PgStream,
        startup: StartupMessage,
        leftover: BytesMut,
    },
    /// A CancelRequest (body: process id and secret key) to forward upstream.
    Cancel(Vec<u8>),
}

/// Reads the startup packets of a new connection. On a protocol violation the client is sent
/// a FATAL error before the error is returned.
pub async fn negotiate(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Opening> {
    let mut stream = PgStream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let packet = match read_startup_packet(&mut stream, &mut buf).await {
            Ok(packet) => packet,
            Err(err) => {
                if matches!(err, ProxyError::ClientProtocol(_)) {
                    let _ = stream
                        .write_all(error_response::fatal(&err).as_bytes())
                        .await;
                }
                return Err(err);
            }
        };
        match StartupPacket::decode(&packet) {
            Ok(StartupPacket::Startup(startup)) => {
                return Ok(Opening::Session {
                    stream,
                    startup,
                    leftover: buf,
                })
            }
            Ok(StartupPacket::Cancel(body)) => return Ok(Opening::Cancel(body)),
            Ok(StartupPacket::SslRequest) if !stream.is_tls() => {
                if !buf.is_empty() {
                    // Bytes after SSLRequest would be plaintext smuggled past the handshake.
                    let err = ProxyError::ClientProtocol(
                        "received unencrypted data after SSL request".into(),
                    );
                    let _ = stream
                        .write_all(error_response::fatal(&err).as_bytes())
                        .await;
                    return Err(err);
                }
                stream = match (stream, tls) {
                    (PgStream::Plain(mut tcp), Some(acceptor)) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor
                            .accept(tcp)
                            .await
                            .map_err(|e| ProxyError::Tls(format!("handshake failed: {e}")))?;
                        PgStream::ServerTls(Box::new(tls))
                    }
                    (mut other, _) => {
                        other.write_all(b"N").await?;
                        other
                    }
                };
            }
            Ok(StartupPacket::GssEncRequest) if !stream.is_tls() => {
                stream.write_all(b"N").await?;
            }
            Ok(_) => {
                let err = ProxyError::ClientProtocol("unexpected encryption request".into());
                let _ = stream
                    .write_all(error_response::fatal(&err).as_bytes())
                    .await;
                return Err(err);
            }
            Err(err) => {
                let _ = stream
                    .write_all(error_response::fatal(&err).as_bytes())
                    .await;
                return Err(err);
            }
        }
    }
}

async fn read_startup_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Vec<u8>> {
    loop {
        if let Some(packet) = take_startup_packet(buf)? {
            return Ok(packet.to_vec());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// The error for a client over TLS that supports SCRAM channel binding, when the upstream
/// offers it over its own TLS link. The proxy hides SCRAM-SHA-256-PLUS (the binding would be to
/// the proxy's certificate, not the server's), so the client answers with the gs2 flag `y`,
/// which a server that does offer binding must reject as a downgrade. The flag cannot be
/// rewritten: the client-final-message repeats it (`c=eSws`) under the ClientProof. Only a
/// proxy that terminates SCRAM itself (holding the verifiers, as PgBouncer's auth_file does)
/// could bridge it; this one relays authentication, so it says how to avoid the combination.
fn channel_binding_cannot_pass() -> ProxyError {
    ProxyError::Upstream(UpstreamError {
        sqlstate: "08P01".into(),
        message: "SCRAM channel binding cannot pass through pgml-proxy".into(),
        detail: Some(
            "The client connected over TLS offers channel binding, and the upstream server, \
             reached over TLS, supports it; a relaying proxy cannot bind one TLS link to the \
             other. Connect with channel_binding=disable (libpq, pgjdbc: channelBinding=disable), \
             or without TLS to the proxy, or run the proxy with --upstream-sslmode disable or \
             over a Unix socket to the server."
                .into(),
        ),
    })
}

/// Relays the authentication exchange until the first ReadyForQuery (returns true) or until
/// the upstream refuses the client or a side closes (returns false). Until then client
/// messages are limited as Postgres limits them (PG_MAX_AUTH_TOKEN_LENGTH).
pub async fn authenticate(io: &mut SessionIo) -> Result<bool> {
    io.set_client_message_limit(MAX_AUTH_MESSAGE);
    let authenticated = relay_authentication(io).await;
    io.set_client_message_limit(MAX_CLIENT_MESSAGE);
    authenticated
}

async fn relay_authentication(io: &mut SessionIo) -> Result<bool> {
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
                    return Ok(true);
                }
                server_tag::ERROR_RESPONSE => {
                    io.send_client(&frame);
                    io.flush().await?;
                    return Ok(false);
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
                    return Err(channel_binding_cannot_pass());
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
                return Ok(false);
            }
        }
    }
}
