//! The upstream Postgres: its address from `--upstream postgres://HOST:PORT` (or a Unix
//! socket directory as HOST, as libpq spells it), opening a connection to it with libpq's
//! sslmode semantics over TCP (see `SslMode`; Unix sockets never use TLS; the certificate is
//! checked against `sslrootcert=` from the URL), saying in the log when that link leaves this
//! host in clear text, and forwarding CancelRequests to it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;
use crate::net::messages::error_response::Fields;
use crate::net::messages::startup::{encode_cancel, encode_ssl_request};
use crate::net::stream::PgStream;
use crate::net::tls;
pub use crate::net::url::SslMode;
use crate::net::url::{parse_url, redact_url, ParsedUrl};

/// How long opening a connection may take, TLS negotiation included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest ErrorResponse read as the answer to an SSLRequest (Postgres' are a few hundred
/// bytes; the limit only keeps a broken server from making the proxy buffer much).
const MAX_SSL_ERROR: usize = 16 * 1024;

/// Where the upstream server is and how to reach it.
#[derive(Clone)]
pub struct Upstream {
    target: Target,
    sslmode: SslMode,
    connector: Option<TlsConnector>,
    root_cert: Option<PathBuf>,
    /// The kind of link the latest connection got ([`Link`] as u8), shared by the clones, so
    /// that the log says when it changes rather than once per session.
    link: Arc<AtomicU8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket file itself (`DIR/.s.PGSQL.PORT`).
    Unix(PathBuf),
}

/// What a TCP connection to the upstream turned out to be, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Link {
    Tls = 1,
    /// Plain, to a loopback address: it does not leave this host.
    PlainLocal = 2,
    /// Plain, to another host.
    PlainRemote = 3,
}

impl Link {
    fn plain(tcp: &TcpStream) -> Link {
        // The address actually connected, not the name: `db` may well be 127.0.0.1.
        if tcp
            .peer_addr()
            .is_ok_and(|a| a.ip().to_canonical().is_loopback())
        {
            Link::PlainLocal
        } else {
            Link::PlainRemote
        }
    }
}

/// The answer to an SSLRequest and what came of it.
enum Negotiated {
    Tls(Box<TlsStream<TcpStream>>),
    /// The server answered `N`: it does not do TLS (or not for us).
    Refused(TcpStream),
    /// The server answered `S` but the handshake failed (certificate, protocol): the reason.
    HandshakeFailed(String),
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            Target::Tcp { .. } => write!(f, "{} (sslmode {})", self.addr(), self.sslmode.as_str()),
            Target::Unix(_) => write!(f, "{} (Unix socket)", self.addr()),
        }
    }
}

impl Upstream {
    /// An upstream at `host:port`; a host starting with `/` is a Unix socket directory, as in
    /// libpq (the socket is `host/.s.PGSQL.port`, and TLS does not apply).
    pub fn new(host: &str, port: u16, sslmode: SslMode) -> Result<Self> {
        Upstream::with_root_cert(host, port, sslmode, None)
    }

    /// As `new`, with the root certificate(s) the upstream's certificate must chain to (libpq's
    /// `sslrootcert`): required by verify-ca and verify-full, and, as in libpq, makes `require`
    /// and `prefer` check the chain too.
    pub fn with_root_cert(
        host: &str,
        port: u16,
        sslmode: SslMode,
        root_cert: Option<&Path>,
    ) -> Result<Self> {
        if host.starts_with('/') {
            return Ok(Upstream::unix(
                Path::new(host).join(format!(".s.PGSQL.{port}")),
            ));
        }
        // libpq loads a root certificate file whenever there is one and then verifies the
        // chain (SSL_VERIFY_PEER) in every mode that tries TLS; verify-full adds the host name.
        let verification = match (sslmode, root_cert) {
            (SslMode::Disable, _) => None,
            (SslMode::Prefer | SslMode::Require, None) => Some(tls::Verification::None),
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(root)) => {
                Some(tls::Verification::Chain(root.to_owned()))
            }
            (SslMode::VerifyFull, Some(root)) => {
                Some(tls::Verification::ChainAndHost(root.to_owned()))
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(ProxyError::Config(format!(
                    "sslmode {} needs a root certificate: add sslrootcert=/path/to/root.crt to \
                     the --upstream URL",
                    sslmode.as_str()
                )))
            }
        };
        let connector = verification.as_ref().map(tls::connector).transpose()?;
        Ok(Upstream {
            target: Target::Tcp {
                host: host.to_owned(),
                port,
            },
            sslmode,
            connector,
            root_cert: root_cert.map(Path::to_owned),
            link: Arc::default(),
        })
    }

    /// An upstream at the Unix socket `socket` (the file, not its directory).
    pub fn unix(socket: PathBuf) -> Self {
        Upstream {
            target: Target::Unix(socket),
            sslmode: SslMode::Disable,
            connector: None,
            root_cert: None,
            link: Arc::default(),
        }
    }

    /// Parses `postgres://[user[:password]@]HOST[:PORT][/db][?host=...]`; only host and port
    /// are used, since user and database come from each client's startup message. HOST may be
    /// a percent-encoded socket directory (`%2Fvar%2Frun%2Fpostgresql`), or given as `host=`.
    /// `sslrootcert=PATH` in the query names the root certificate(s), as in libpq. The sslmode
    /// is the URL's `sslmode=` or `flag` (`--upstream-sslmode`), the stricter when both are
    /// given, and libpq's default (`prefer`) when neither is.
    pub fn from_url(url: &str, flag: Option<SslMode>) -> Result<Self> {
        let parsed = parse_url(url)?;
        let sslmode = SslMode::resolve(parsed.sslmode, flag);
        Upstream::from_parsed(&parsed, sslmode)
    }

    fn from_parsed(parsed: &ParsedUrl, sslmode: SslMode) -> Result<Self> {
        Upstream::with_root_cert(
            &parsed.host,
            parsed.port,
            sslmode,
            parsed.root_cert.as_deref(),
        )
    }

    /// `host:port` or the socket path, for messages.
    pub fn addr(&self) -> String {
        match &self.target {
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(path) => path.display().to_string(),
        }
    }

    /// Whether connections go through a Unix socket (where `local` pg_hba.conf lines apply).
    pub fn is_unix_socket(&self) -> bool {
        matches!(self.target, Target::Unix(_))
    }

    /// What the proxy's own tokio-postgres connections to this server (the service connection,
    /// `install`, `backfill`, `load-dataset`) need for the same TLS as relayed sessions: the
    /// connector, and the sslmode to set on their `tokio_postgres::Config` (verify-ca and
    /// verify-full are `Require` there, the checks being in the connector).
    pub fn postgres_tls(&self) -> Result<(tls::PostgresTls, tokio_postgres::config::SslMode)> {
        use tokio_postgres::config::SslMode as PgSslMode;
        let mode = match (self.sslmode, &self.target) {
            (_, Target::Unix(_)) | (SslMode::Disable, _) => PgSslMode::Disable,
            (SslMode::Prefer, _) => PgSslMode::Prefer,
            (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, _) => PgSslMode::Require,
        };
        let connector = match &self.connector {
            Some(connector) => connector.clone(),
            // Not used with sslmode disable, but tokio-postgres wants a connector all the same.
            None => tls::connector(&tls::Verification::None)?,
        };
        Ok((tls::PostgresTls::new(&connector), mode))
    }

    /// Whether a connection can be opened at all (no start-up, no TLS): for readiness.
    pub async fn reachable(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.open())
            .await
            .is_ok_and(|c| c.is_ok())
    }

    async fn open(&self) -> std::io::Result<PgStream> {
        match &self.target {
            Target::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                Ok(PgStream::Plain(tcp))
            }
            Target::Unix(path) => Ok(PgStream::Unix(UnixStream::connect(path).await?)),
        }
    }

    fn unreachable(&self, reason: String) -> ProxyError {
        ProxyError::UpstreamUnreachable {
            addr: self.addr(),
            reason,
        }
    }

    /// Opens a connection, negotiating TLS per the sslmode over TCP, within `CONNECT_TIMEOUT`
    /// (a server that accepts the connection but never answers the SSLRequest included).
    pub async fn connect(&self) -> Result<PgStream> {
        self.connect_within(CONNECT_TIMEOUT).await
    }

    async fn connect_within(&self, limit: Duration) -> Result<PgStream> {
        tokio::time::timeout(limit, self.negotiate())
            .await
            .map_err(|_| self.unreachable("timed out".into()))?
    }

    async fn negotiate(&self) -> Result<PgStream> {
        let stream = self
            .open()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let (tcp, host) = match (stream, &self.target) {
            (PgStream::Plain(tcp), Target::Tcp { host, .. }) => (tcp, host),
            (stream, _) => return Ok(stream),
        };
        let Some(connector) = &self.connector else {
            self.note(Link::plain(&tcp), "sslmode is disable");
            return Ok(PgStream::Plain(tcp));
        };
        match (self.start_tls(tcp, connector, host).await?, self.sslmode) {
            (Negotiated::Tls(tls), _) => {
                self.note(Link::Tls, "");
                Ok(PgStream::ClientTls(tls))
            }
            (Negotiated::Refused(tcp), SslMode::Prefer) => {
                self.note(Link::plain(&tcp), "the server does not offer TLS");
                Ok(PgStream::Plain(tcp))
            }
            (Negotiated::Refused(_), mode) => Err(self.unreachable(format!(
                "the server does not support TLS, but sslmode {} requires it",
                mode.as_str()
            ))),
            // libpq's prefer tries once more without TLS, on a new connection, after any failed
            // handshake (a certificate that does not verify against sslrootcert included).
            (Negotiated::HandshakeFailed(reason), SslMode::Prefer) => {
                let stream = self
                    .open()
                    .await
                    .map_err(|e| self.unreachable(e.to_string()))?;
                if let PgStream::Plain(tcp) = &stream {
                    self.note(
                        Link::plain(tcp),
                        &format!("{reason}; sslmode prefer then connects without TLS"),
                    );
                }
                Ok(stream)
            }
            (Negotiated::HandshakeFailed(reason), _) => Err(self.unreachable(reason)),
        }
    }

    /// Logs the kind of link a connection got when it differs from the previous connection's:
    /// a warning when it leaves this host in clear text.
    fn note(&self, link: Link, why: &str) {
        let before = self.link.swap(link as u8, Ordering::Relaxed);
        if before == link as u8 {
            if !why.is_empty() {
                tracing::debug!(upstream = %self.addr(), reason = why, "upstream connection without TLS");
            }
            return;
        }
        let verified = match (self.sslmode, &self.root_cert) {
            (SslMode::VerifyFull, Some(_)) => "the certificate's chain and host name are verified",
            (_, Some(_)) => "the certificate's chain is verified, not its host name",
            (_, None) => "the server's certificate is not verified",
        };
        let addr = self.addr();
        let sslmode = self.sslmode.as_str();
        match link {
            Link::Tls => {
                tracing::info!(upstream = %addr, sslmode, "connections to the upstream use TLS; {verified}")
            }
            Link::PlainLocal => tracing::info!(
                upstream = %addr,
                sslmode,
                reason = why,
                "connections to the upstream are not encrypted; they stay on this host (loopback)"
            ),
            Link::PlainRemote => tracing::warn!(
                upstream = %addr,
                sslmode,
                reason = why,
                "connections to the upstream leave this host in clear text: whoever is on the \
                 network path can read and change queries and results, and passwords sent as \
                 cleartext or md5; give the server's CA certificate as sslrootcert= in \
                 --upstream and use --upstream-sslmode verify-full"
            ),
        }
    }

    /// SSLRequest on a fresh TCP connection, then the TLS handshake when the server agrees.
    async fn start_tls(
        &self,
        mut tcp: TcpStream,
        connector: &TlsConnector,
        host: &str,
    ) -> Result<Negotiated> {
        let lost = |e: std::io::Error| self.unreachable(format!("during the SSLRequest: {e}"));
        tcp.write_all(&encode_ssl_request()).await.map_err(lost)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(lost)?;
        match answer[0] {
            b'S' => match connector.connect(tls::server_name(host)?, tcp).await {
                Ok(tls) => Ok(Negotiated::Tls(Box::new(tls))),
                Err(e) => Ok(Negotiated::HandshakeFailed(tls::describe_handshake_error(
                    &e,
                    host,
                    self.root_cert.as_deref(),
                ))),
            },
            b'N' => Ok(Negotiated::Refused(tcp)),
            // A server that cannot serve at all (too many clients, starting up) says why in an
            // ErrorResponse instead, as libpq expects.
            b'E' => Err(self.unreachable(read_ssl_error(&mut tcp).await)),
            other => Err(ProxyError::UpstreamProtocol(format!(
                "invalid response to SSLRequest: {other:#x}"
            ))),
        }
    }

    /// Forwards a client's CancelRequest (process id and secret key, unchanged).
    pub async fn cancel(&self, body: &[u8]) -> Result<()> {
        let mut conn = self.connect().await?;
        conn.write_all(&encode_cancel(body)).await?;
        conn.flush().await?;
        // The server closes the connection without answering; wait for that (briefly) so the
        // request is not cut short by our own close.
        let mut sink = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut sink)).await;
        Ok(())
    }
}

/// The message of the ErrorResponse that follows an `E` answer to an SSLRequest (its tag
/// already read).
async fn read_ssl_error(tcp: &mut TcpStream) -> String {
    let mut len = [0u8; 4];
    if tcp.read_exact(&mut len).await.is_err() {
        return "the server answered the SSLRequest with an error".into();
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(4..=MAX_SSL_ERROR).contains(&len) {
        return "the server answered the SSLRequest with a malformed error".into();
    }
    let mut body = vec![0u8; len - 4];
    if tcp.read_exact(&mut body).await.is_err() {
        return "the server answered the SSLRequest with a truncated error".into();
    }
    let fields = Fields::decode(&Frame::new(b'E', &body));
    format!(
        "the server refused the connection: {}",
        fields.message().unwrap_or("(no message)")
    )
}

/// A tokio-postgres configuration for `url` (credentials and all) and the TLS connector to
/// connect it with, with the TLS settings relayed sessions get from the same URL and sslmode:
/// for the proxy's own connections (service connection, `install`, `backfill`,
/// `load-dataset`). libpq's `sslmode=verify-ca|verify-full` and `sslrootcert=`, which
/// tokio-postgres does not know, are taken out of the URL and applied through the connector.
///
/// The sslmode is the URL's (libpq's default, `prefer`, when it names none), raised to `floor`
/// when that is stricter.
pub fn postgres_config(
    url: &str,
    floor: SslMode,
) -> Result<(tokio_postgres::Config, tls::PostgresTls)> {
    let parsed = parse_url(url)?;
    let sslmode = SslMode::resolve(parsed.sslmode, None).max(floor);
    let (tls, mode) = Upstream::from_parsed(&parsed, sslmode)?.postgres_tls()?;
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && key != "sslmode" && key != "sslrootcert"
        })
        .collect();
    let url_for_tokio = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = url_for_tokio
        .parse()
        .map_err(|e| ProxyError::Config(format!("invalid URL {:?}: {e}", redact_url(url))))?;
    config.ssl_mode(mode);
    Ok((config, tls))
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
