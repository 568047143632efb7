//! A connection that is plain TCP, a Unix-domain socket (the embedded Postgres, or an
//! upstream given as a socket directory) or TLS (terminated by the proxy for clients,
//! originated by the proxy towards the upstream), behind one AsyncRead/AsyncWrite type, and
//! its read and write halves (plain sockets split into owned halves without a lock).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A client or upstream connection.
pub enum PgStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A Unix-domain socket (upstream only).
    Unix(UnixStream),
    /// TLS terminated at the proxy (client side).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS opened by the proxy (upstream side).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl PgStream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, PgStream::Plain(_) | PgStream::Unix(_))
    }

    /// Splits the connection into a read half and a write half that can be used at once.
    pub fn split(self) -> (PgReadHalf, PgWriteHalf) {
        match self {
            PgStream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (PgReadHalf::Plain(rd), PgWriteHalf::Plain(wr))
            }
            PgStream::Unix(sock) => {
                let (rd, wr) = sock.into_split();
                (PgReadHalf::Unix(rd), PgWriteHalf::Unix(wr))
            }
            tls => {
                let (rd, wr) = tokio::io::split(tls);
                (PgReadHalf::Tls(rd), PgWriteHalf::Tls(wr))
            }
        }
    }
}

/// The read half of a `PgStream`.
pub enum PgReadHalf {
    /// Plain TCP: an owned half, no lock shared with the writer.
    Plain(tcp::OwnedReadHalf),
    /// Unix-domain socket: an owned half.
    Unix(unix::OwnedReadHalf),
    /// TLS: one session state for both directions, behind tokio's split lock.
    Tls(tokio::io::ReadHalf<PgStream>),
}

/// The write half of a `PgStream`.
pub enum PgWriteHalf {
    /// Plain TCP: an owned half, no lock shared with the reader.
    Plain(tcp::OwnedWriteHalf),
    /// Unix-domain socket: an owned half.
    Unix(unix::OwnedWriteHalf),
    /// TLS: one session state for both directions, behind tokio's split lock.
    Tls(tokio::io::WriteHalf<PgStream>),
}

impl AsyncRead for PgReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PgReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
            PgReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgWriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PgWriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
            PgWriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgWriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            PgWriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
            PgWriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgWriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgWriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
            PgWriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PgStream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PgStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PgStream::Unix(s) => Pin::new(s).poll_flush(cx),
            PgStream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PgStream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PgStream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
