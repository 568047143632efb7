//! The proxy's one error type, and the single place where each failure is mapped to the
//! SQLSTATE a client sees. Errors that reach a client become a FATAL ErrorResponse.

use std::io;

/// Everything that can go wrong in the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client broke the wire protocol (bad length, unknown message, garbage).
    #[error("invalid frontend message: {0}")]
    ClientProtocol(String),
    /// The upstream server broke the wire protocol.
    #[error("invalid message from upstream server: {0}")]
    UpstreamProtocol(String),
    /// The upstream server could not be reached.
    #[error("could not connect to upstream server {addr}: {reason}")]
    UpstreamUnreachable { addr: String, reason: String },
    /// `--max-connections` sessions are already open.
    #[error("sorry, too many clients already")]
    TooManyConnections,
    /// The proxy is shutting down.
    #[error("terminating connection due to administrator command")]
    Shutdown,
    /// A socket failed mid-session.
    #[error("connection failure: {0}")]
    Io(#[from] io::Error),
    /// TLS set-up failed (bad certificate or key file, failed handshake).
    #[error("TLS: {0}")]
    Tls(String),
    /// Invalid configuration (CLI flags, environment).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The embedded Postgres could not be set up, started or stopped.
    #[error("embedded Postgres: {0}")]
    Embedded(String),
}

impl ProxyError {
    /// The SQLSTATE reported to a client for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // protocol_violation
            ProxyError::ClientProtocol(_) | ProxyError::UpstreamProtocol(_) => "08P01",
            // connection_failure
            ProxyError::UpstreamUnreachable { .. } | ProxyError::Io(_) | ProxyError::Tls(_) => {
                "08006"
            }
            // too_many_connections
            ProxyError::TooManyConnections => "53300",
            // admin_shutdown
            ProxyError::Shutdown => "57P01",
            // config_file_error
            ProxyError::Config(_) => "F0000",
            // system_error
            ProxyError::Embedded(_) => "58000",
        }
    }
}

/// Result alias used throughout the proxy.
pub type Result<T, E = ProxyError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_match_postgres_codes() {
        assert_eq!(ProxyError::ClientProtocol("x".into()).sqlstate(), "08P01");
        assert_eq!(
            ProxyError::UpstreamUnreachable {
                addr: "a".into(),
                reason: "b".into()
            }
            .sqlstate(),
            "08006"
        );
        assert_eq!(ProxyError::TooManyConnections.sqlstate(), "53300");
        assert_eq!(ProxyError::Shutdown.sqlstate(), "57P01");
    }
}
