//! The upstream Postgres: its address from `--upstream postgres://HOST:PORT` (or a Unix
//! socket directory as HOST, as libpq spells it), opening a connection to it (TLS per
//! `--upstream-sslmode` over TCP, the certificate checked against `sslrootcert=` from the URL
//! with verify-ca and verify-full), and forwarding CancelRequests to it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::error::{ProxyError, Result};
use crate::net::messages::startup::{encode_cancel, encode_ssl_request};
use crate::net::stream::PgStream;
use crate::net::tls;
pub use crate::net::url::SslMode;
use crate::net::url::{parse_url, redact_url};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the upstream server is and how to reach it.
#[derive(Clone)]
pub struct Upstream {
    target: Target,
    sslmode: SslMode,
    connector: Option<TlsConnector>,
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

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sslmode {:?})", self.addr(), self.sslmode)
    }
}

impl Upstream {
    /// An upstream at `host:port`; a host starting with `/` is a Unix socket directory, as in
    /// libpq (the socket is `host/.s.PGSQL.port`, and TLS does not apply).
    pub fn new(host: &str, port: u16, sslmode: SslMode) -> Result<Self> {
        Upstream::with_root_cert(host, port, sslmode, None)
    }

    /// As `new`, with the root certificate(s) the upstream's certificate must chain to (libpq's
    /// `sslrootcert`): required by verify-ca and verify-full, and makes `require` check the chain.
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
        let verification = match (sslmode, root_cert) {
            (SslMode::Disable, _) => None,
            (SslMode::Prefer, _) | (SslMode::Require, None) => Some(tls::Verification::None),
            (SslMode::Require | SslMode::VerifyCa, Some(root)) => {
                Some(tls::Verification::Chain(root.to_owned()))
            }
            (SslMode::VerifyFull, Some(root)) => {
                Some(tls::Verification::ChainAndHost(root.to_owned()))
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(ProxyError::Config(format!(
                    "--upstream-sslmode {} needs a root certificate: add \
                     sslrootcert=/path/to/root.crt to the --upstream URL",
                    if sslmode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
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
        })
    }

    /// An upstream at the Unix socket `socket` (the file, not its directory).
    pub fn unix(socket: PathBuf) -> Self {
        Upstream {
            target: Target::Unix(socket),
            sslmode: SslMode::Disable,
            connector: None,
        }
    }

    /// Parses `postgres://[user[:password]@]HOST[:PORT][/db][?host=...]`; only host and port
    /// are used, since user and database come from each client's startup message. HOST may be
    /// a percent-encoded socket directory (`%2Fvar%2Frun%2Fpostgresql`), or given as `host=`.
    /// `sslrootcert=PATH` in the query names the root certificate(s), as in libpq; an
    /// `sslmode=` there counts when it is stricter than `sslmode` (a URL that asks for TLS never
    /// silently gets less).
    pub fn from_url(url: &str, sslmode: SslMode) -> Result<Self> {
        let parsed = parse_url(url)?;
        Upstream::with_root_cert(
            &parsed.host,
            parsed.port,
            parsed.sslmode.map_or(sslmode, |m| m.max(sslmode)),
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

    /// Opens a connection, negotiating TLS per the sslmode (over TCP).
    pub async fn connect(&self) -> Result<PgStream> {
        let unreachable = |reason: String| ProxyError::UpstreamUnreachable {
            addr: self.addr(),
            reason,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        match (stream, &self.connector, &self.target) {
            (PgStream::Plain(tcp), Some(connector), Target::Tcp { host, .. }) => {
                self.start_tls(tcp, connector, host).await
            }
            (stream, ..) => Ok(stream),
        }
    }

    /// SSLRequest on a fresh TCP connection, then the TLS handshake or (with `prefer` and an
    /// 'N' answer) plain TCP.
    async fn start_tls(
        &self,
        mut tcp: TcpStream,
        connector: &TlsConnector,
        host: &str,
    ) -> Result<PgStream> {
        let unreachable = |reason: String| ProxyError::UpstreamUnreachable {
            addr: self.addr(),
            reason,
        };
        tcp.write_all(&encode_ssl_request()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match (answer[0], self.sslmode) {
            (b'S', _) => {
                let tls = connector
                    .connect(tls::server_name(host)?, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))?;
                Ok(PgStream::ClientTls(Box::new(tls)))
            }
            (b'N', SslMode::Prefer) => Ok(PgStream::Plain(tcp)),
            (b'N', _) => Err(unreachable("server does not support SSL".into())),
            (other, _) => Err(ProxyError::UpstreamProtocol(format!(
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

/// A tokio-postgres configuration for `url` (credentials and all) and the TLS connector to
/// connect it with, with the TLS settings relayed sessions get from the same URL and sslmode:
/// for the proxy's own connections (service connection, `install`, `backfill`,
/// `load-dataset`). libpq's `sslmode=verify-ca|verify-full` and `sslrootcert=`, which
/// tokio-postgres does not know, are taken out of the URL and applied through the connector.
pub fn postgres_config(
    url: &str,
    sslmode: SslMode,
) -> Result<(tokio_postgres::Config, tls::PostgresTls)> {
    let (tls, mode) = Upstream::from_url(url, sslmode)?.postgres_tls()?;
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
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        let cases = [
            ("postgres://db.example.com:5433", ("db.example.com", 5433)),
            (
                "postgresql://u:p@10.0.0.1/app?sslmode=require",
                ("10.0.0.1", 5432),
            ),
            ("postgres://[::1]:6000/x", ("::1", 6000)),
            (
                "postgres://%2Frun%2Fpostgresql:5433/db",
                ("/run/postgresql", 5433),
            ),
            (
                "postgres:///db?host=/tmp/pg%20dir&port=7000",
                ("/tmp/pg dir", 7000),
            ),
            ("postgres://ignored:1/db?sslmode=disable&host=h2", ("h2", 1)),
        ];
        for (url, (host, port)) in cases {
            assert_eq!(
                parse_url(url).map(|p| (p.host, p.port)).unwrap(),
                (host.to_owned(), port),
                "{url}"
            );
        }
        for bad in [
            "http://x",
            "postgres://:5",
            "postgres://h:notaport",
            "postgres://%2x/db",
            "postgres:///db",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn postgres_config_takes_libpq_tls_parameters_out_and_keeps_the_rest() {
        use tokio_postgres::config::SslMode as PgSslMode;
        let (config, _) = postgres_config(
            "postgres://svc:pw@db:6000/app?sslmode=require&application_name=x",
            SslMode::Disable,
        )
        .unwrap();
        assert_eq!(config.get_user(), Some("svc"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_ssl_mode(), PgSslMode::Require);
        let (config, _) = postgres_config("postgres://svc@db/app", SslMode::Prefer).unwrap();
        assert_eq!(config.get_ssl_mode(), PgSslMode::Prefer);
        let err = postgres_config(
            "postgres://svc:pw@db/app?sslmode=verify-full",
            SslMode::Disable,
        )
        .unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err =
            postgres_config("postgres://svc:hunter2@db/app?bogus=1", SslMode::Disable).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_url_sslmode_stricter_than_the_flag_wins() {
        let up = Upstream::from_url("postgres://db:1/x?sslmode=require", SslMode::Disable).unwrap();
        assert_eq!(up.sslmode, SslMode::Require);
        let up = Upstream::from_url("postgres://db:1/x?sslmode=disable", SslMode::Prefer).unwrap();
        assert_eq!(up.sslmode, SslMode::Prefer);
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = Upstream::from_url("postgres://db:5432", mode).unwrap_err();
            assert!(err.to_string().contains("sslrootcert"), "{err}");
        }
        let err = Upstream::from_url(
            "postgres://db:5432/x?sslrootcert=/nonexistent/root.crt",
            SslMode::VerifyFull,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");
    }

    #[test]
    fn a_socket_directory_host_means_a_unix_socket() {
        let up = Upstream::from_url("postgres://%2Frun%2Fpg:6000", SslMode::Require).unwrap();
        assert_eq!(up.target, Target::Unix("/run/pg/.s.PGSQL.6000".into()));
        assert_eq!(up.addr(), "/run/pg/.s.PGSQL.6000");
        let up = Upstream::from_url("postgres://db:6000", SslMode::Disable).unwrap();
        assert_eq!(up.addr(), "db:6000");
    }
}
