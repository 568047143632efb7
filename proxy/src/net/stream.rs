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

/// A plain socket (TCP or Unix-domain) taken out of its runtime, for the relay core: see
/// `lend` and `PlainSocket::restore`.
#[derive(Debug)]
pub enum PlainSocket {
    /// TCP.
    Tcp(std::net::TcpStream),
    /// Unix-domain.
    Unix(std::os::unix::net::UnixStream),
}

impl PlainSocket {
    /// Reads what the socket has (non-blocking).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        match self {
            PlainSocket::Tcp(s) => (&*s).read(buf),
            PlainSocket::Unix(s) => (&*s).read(buf),
        }
    }

    /// Writes what the socket takes (non-blocking).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        match self {
            PlainSocket::Tcp(s) => (&*s).write(buf),
            PlainSocket::Unix(s) => (&*s).write(buf),
        }
    }

    /// Its file descriptor (to register it with an event loop).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            PlainSocket::Tcp(s) => s.as_raw_fd(),
            PlainSocket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Back to a tokio stream, registered with the current runtime, split in halves.
    pub fn restore(self) -> io::Result<(PgReadHalf, PgWriteHalf)> {
        let stream = match self {
            PlainSocket::Tcp(s) => PgStream::Plain(TcpStream::from_std(s)?),
            PlainSocket::Unix(s) => PgStream::Unix(UnixStream::from_std(s)?),
        };
        Ok(stream.split())
    }
}

/// Whether `lend` can take this pair of halves (plain sockets, not TLS, not lent).
pub fn lendable(rd: &PgReadHalf, wr: &PgWriteHalf) -> bool {
    matches!(
        (rd, wr),
        (PgReadHalf::Plain(_), PgWriteHalf::Plain(_)) | (PgReadHalf::Unix(_), PgWriteHalf::Unix(_))
    )
}

/// Takes a plain socket out of its runtime (its halves are left `Lent`), for the relay core.
/// None, and the halves untouched, when they are not `lendable`; an error (and the socket
/// closed) when it cannot be deregistered.
pub fn lend(rd: &mut PgReadHalf, wr: &mut PgWriteHalf) -> Option<io::Result<PlainSocket>> {
    if !lendable(rd, wr) {
        return None;
    }
    let pair = (
        std::mem::replace(rd, PgReadHalf::Lent),
        std::mem::replace(wr, PgWriteHalf::Lent),
    );
    let socket = match pair {
        (PgReadHalf::Plain(r), PgWriteHalf::Plain(w)) => r
            .reunite(w)
            .map_err(|_| lent())
            .and_then(TcpStream::into_std)
            .map(PlainSocket::Tcp),
        (PgReadHalf::Unix(r), PgWriteHalf::Unix(w)) => r
            .reunite(w)
            .map_err(|_| lent())
            .and_then(UnixStream::into_std)
            .map(PlainSocket::Unix),
        _ => Err(lent()),
    };
    Some(socket)
}

/// The error of a half that is lent to the relay core (or could not be taken back).
fn lent() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket lent to the relay core")
}

/// The read half of a `PgStream`.
pub enum PgReadHalf {
    /// Plain TCP: an owned half, no lock shared with the writer.
    Plain(tcp::OwnedReadHalf),
    /// Unix-domain socket: an owned half.
    Unix(unix::OwnedReadHalf),
    /// TLS: one session state for both directions, behind tokio's split lock.
    Tls(tokio::io::ReadHalf<PgStream>),
    /// Lent to the relay core (`session::core`) with its write half: reads fail.
    Lent,
}

/// The write half of a `PgStream`.
pub enum PgWriteHalf {
    /// Plain TCP: an owned half, no lock shared with the reader.
    Plain(tcp::OwnedWriteHalf),
    /// Unix-domain socket: an owned half.
    Unix(unix::OwnedWriteHalf),
    /// TLS: one session state for both directions, behind tokio's split lock.
    Tls(tokio::io::WriteHalf<PgStream>),
    /// Lent to the relay core (`session::core`) with its read half: writes fail.
    Lent,
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
            PgReadHalf::Lent => Poll::Ready(Err(lent())),
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
            PgWriteHalf::Lent => Poll::Ready(Err(lent())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgWriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            PgWriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
            PgWriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
            PgWriteHalf::Lent => Poll::Ready(Err(lent())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgWriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgWriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
            PgWriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
            PgWriteHalf::Lent => Poll::Ready(Err(lent())),
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
