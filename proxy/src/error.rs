//! The proxy's one error type, and the single place where each failure is mapped to the
//! SQLSTATE a client sees. It wraps the engine's, the rewriter's and the bulk crate's errors,
//! and errors the upstream server reported. Session errors become a FATAL ErrorResponse;
//! a failed `pgml.*` call becomes an ERROR inside the client's statement.

use std::io;

/// SQLSTATE query_canceled: what a statement ended by a CancelRequest reports.
pub const QUERY_CANCELED: &str = "57014";

/// An error the upstream server reported (its own SQLSTATE, message and detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// SQLSTATE as the server sent it.
    pub sqlstate: String,
    /// Primary message.
    pub message: String,
    /// DETAIL, when there is one.
    pub detail: Option<String>,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

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
    /// The embedding engine failed (unknown model, bad kwargs, inference error).
    #[error("{0}")]
    Engine(#[from] pgml_engine::EngineError),
    /// The rewriter refused a statement.
    #[error("{0}")]
    Rewrite(#[from] pgml_rewriter::RewriteError),
    /// pgml.load_dataset failed.
    #[error("{0}")]
    Bulk(#[from] pgml_bulk::BulkError),
    /// pgml.chunk refused its arguments (unknown splitter, bad kwargs).
    #[error("pgml.chunk: {0}")]
    Chunk(#[from] pgml_chunk::ChunkError),
    /// The upstream server reported an error.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// A `pgml.*` kwargs argument is not valid JSON (as Postgres' jsonb cast reports it).
    #[error("invalid input syntax for type json")]
    InvalidJson {
        /// Which function's kwargs.
        function: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A constant call's arguments could not be bound (missing `$n`, invalid text).
    #[error("{0}")]
    Bind(#[from] pgml_rewriter::BindError),
    /// The upcall service failed to answer in time.
    #[error("pgml.embed: embedding timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The proxy refused to answer an upcall in a database whose shim objects it does not
    /// trust (another owner, triggers, rules, policies).
    #[error("{0}")]
    AnswerRefused(String),
    /// The upcall service or the shim could not do its job.
    #[error("{0}")]
    Service(String),
    /// Messages buffered whole across all sessions would exceed `--client-buffer-budget-mb`.
    #[error("out of memory")]
    OutOfMemory {
        /// The size of the message that did not fit.
        request: usize,
        /// The budget.
        limit: usize,
    },
    /// A message to buffer whole is larger than one session may hold (a quarter of
    /// `--client-buffer-budget-mb`), known from its header.
    #[error("{} message too large for pgml-proxy: {size} bytes", side(.from))]
    MessageTooLarge {
        /// Who sent it.
        from: crate::net::frame::Direction,
        /// Its size (or what the session would hold with it).
        size: usize,
        /// What one session may hold.
        limit: usize,
    },
    /// A large client message did not arrive whole in time.
    #[error("terminating connection due to timeout: client message of {size} bytes incomplete after {after:?} ({received} bytes received)")]
    MessageTimeout {
        /// The size its header announced.
        size: usize,
        /// How much of it arrived.
        received: usize,
        /// The deadline.
        after: std::time::Duration,
    },
    /// The client left a large server message unread in time.
    #[error("terminating connection due to timeout: the client left {queued} bytes of server messages unread for {after:?}")]
    UnreadTimeout {
        /// Bytes queued for the client.
        queued: usize,
        /// The deadline.
        after: std::time::Duration,
    },
    /// A session prepared more statements with pgml calls than the proxy remembers for one.
    #[error("too many prepared statements with pgml.* calls in one session")]
    StatementsRetained {
        /// Statements the proxy remembers for a session, at most.
        max_statements: usize,
        /// Bytes they may take, at most.
        max_bytes: usize,
    },
    /// A TLS client offers SCRAM channel binding that the TLS upstream would require.
    #[error("SCRAM channel binding cannot pass through pgml-proxy")]
    ChannelBinding,
    /// Input over one of the proxy's limits.
    #[error("{0}")]
    LimitExceeded(String),
    /// An invariant of the proxy's own failed.
    #[error("pgml-proxy: internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The SQLSTATE reported to a client for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            ProxyError::Engine(e) => e.sqlstate(),
            ProxyError::Rewrite(e) => e.sqlstate(),
            ProxyError::Bulk(e) => e.sqlstate(),
            ProxyError::Chunk(e) => e.sqlstate(),
            ProxyError::Upstream(e) => &e.sqlstate,
            // invalid_text_representation
            ProxyError::InvalidJson { .. } => "22P02",
            ProxyError::Bind(e) => e.sqlstate(),
            // query_canceled
            ProxyError::Timeout(_) => "57014",
            // object_not_in_prerequisite_state
            ProxyError::Service(_) => "55000",
            // insufficient_privilege
            ProxyError::AnswerRefused(_) => "42501",
            ProxyError::Internal(_) => "XX000",
            // program_limit_exceeded
            ProxyError::LimitExceeded(_)
            | ProxyError::MessageTooLarge { .. }
            | ProxyError::StatementsRetained { .. } => "54000",
            // query_canceled: as Postgres ends a client stalled in authentication
            ProxyError::MessageTimeout { .. } | ProxyError::UnreadTimeout { .. } => "57014",
            // out_of_memory
            ProxyError::OutOfMemory { .. } => "53200",
            // protocol_violation
            ProxyError::ChannelBinding => "08P01",
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

impl ProxyError {
    /// The DETAIL a client sees with this error, when there is one.
    pub fn detail(&self) -> Option<String> {
        match self {
            ProxyError::Upstream(e) => e.detail.clone(),
            ProxyError::InvalidJson { function, source } => {
                Some(format!("{function} kwargs: {source}"))
            }
            ProxyError::Bind(e) => e.detail(),
            ProxyError::OutOfMemory { request, limit } => Some(format!(
                "Failed on request of size {request}: large messages buffered whole by \
                 pgml-proxy may take {limit} bytes in all sessions together \
                 (--client-buffer-budget-mb)."
            )),
            ProxyError::MessageTooLarge { limit, .. } => Some(format!(
                "pgml-proxy buffers a message whole (all but large DataRow, CopyData and \
                 FunctionCallResponse messages) and one session may hold {limit} bytes of them: \
                 a quarter of --client-buffer-budget-mb."
            )),
            ProxyError::StatementsRetained {
                max_statements,
                max_bytes,
            } => Some(format!(
                "pgml-proxy remembers each prepared statement whose text calls pgml.* until it \
                 is closed, at most {max_statements} of them and {max_bytes} bytes per session. \
                 Close the statements no longer needed."
            )),
            ProxyError::ChannelBinding => Some(
                "The client connected over TLS offers channel binding, and the upstream server, \
                 reached over TLS, supports it; a relaying proxy cannot bind one TLS link to the \
                 other. Connect with channel_binding=disable (libpq, pgjdbc: channelBinding=disable), \
                 or without TLS to the proxy, or run the proxy with --upstream-sslmode disable or \
                 over a Unix socket to the server."
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Who sent a message, as an error message says it.
fn side(from: &crate::net::frame::Direction) -> &'static str {
    match from {
        crate::net::frame::Direction::FromClient => "client",
        crate::net::frame::Direction::FromUpstream => "server",
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
