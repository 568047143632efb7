//! The upstream Postgres: its address from `--upstream postgres://HOST:PORT`, opening a
//! connection to it (TLS per `--upstream-sslmode`), and forwarding CancelRequests to it.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{ProxyError, Result};
use crate::messages::startup::{encode_cancel, encode_ssl_request};
use crate::stream::PgStream;
use crate::tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `--upstream-sslmode`: whether the proxy encrypts its connections to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS when the server supports it, plain otherwise.
    Prefer,
    /// TLS or fail (the certificate is not verified, as with libpq's `require`).
    Require,
}

/// Where the upstream server is and how to reach it.
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    sslmode: SslMode,
    connector: Option<TlsConnector>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (sslmode {:?})",
            self.host, self.port, self.sslmode
        )
    }
}

impl Upstream {
    /// An upstream at `host:port`.
    pub fn new(host: &str, port: u16, sslmode: SslMode) -> Result<Self> {
        let connector = match sslmode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(tls::connector()?),
        };
        Ok(Upstream {
            host: host.to_owned(),
            port,
            sslmode,
            connector,
        })
    }

    /// Parses `postgres://[user[:password]@]HOST[:PORT][/db][?...]`; only host and port are used,
    /// since user and database come from each client's startup message.
    pub fn from_url(url: &str, sslmode: SslMode) -> Result<Self> {
        let (host, port) = parse_host_port(url)?;
        Upstream::new(&host, port, sslmode)
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Opens a connection, negotiating TLS per the sslmode.
    pub async fn connect(&self) -> Result<PgStream> {
        let unreachable = |reason: String| ProxyError::UpstreamUnreachable {
            addr: self.addr(),
            reason,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        tcp.set_nodelay(true)?;
        let Some(connector) = &self.connector else {
            return Ok(PgStream::Plain(tcp));
        };
        let mut tcp = tcp;
        tcp.write_all(&encode_ssl_request()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match (answer[0], self.sslmode) {
            (b'S', _) => {
                let tls = connector
                    .connect(tls::server_name(&self.host)?, tcp)
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

fn parse_host_port(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| ProxyError::Config(format!("invalid upstream URL {url:?}: {why}"));
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("expected postgres://HOST:PORT"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        None => 5432,
    };
    Ok((host.to_owned(), port))
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
        ];
        for (url, (host, port)) in cases {
            assert_eq!(
                parse_host_port(url).unwrap(),
                (host.to_owned(), port),
                "{url}"
            );
        }
        for bad in ["http://x", "postgres://:5", "postgres://h:notaport"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}
