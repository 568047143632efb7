//! The opening of a client connection: the startup packet (answering SSLRequest, terminating
//! TLS when configured, declining GSSENCRequest, spotting CancelRequest). The authentication
//! exchange that follows is relayed by `session::auth`.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{ProxyError, Result};
use crate::net::frame::take_startup_packet;
use crate::net::messages::error_response;
use crate::net::messages::startup::{StartupMessage, StartupPacket};
use crate::net::stream::PgStream;

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
