//! The accept loop: one task per client connection, a connection limit, and graceful shutdown
//! (stop accepting, let sessions finish up to a timeout, then cut the rest).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::error::Result;
use crate::net::upstream::Upstream;
use crate::session::connection::{self, Shared};
use crate::session::hook::Interceptor;
use crate::session::io::ClientBudget;

/// How long sessions get to deliver their FATAL once the shutdown timeout has passed.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// How the relay serves clients.
#[derive(Clone)]
pub struct RelayConfig {
    /// The server every session is relayed to.
    pub upstream: Upstream,
    /// TLS for clients that send SSLRequest; `None` answers 'N'.
    pub tls: Option<TlsAcceptor>,
    /// Sessions served at once; more get FATAL 53300.
    pub max_connections: usize,
    /// How long sessions may run on after shutdown begins.
    pub shutdown_timeout: Duration,
}

/// What an unauthenticated or misbehaving client may cost the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// From accept to the first ReadyForQuery (Postgres' authentication_timeout, 60 s by
    /// default): the startup packet, TLS handshake and the whole authentication exchange.
    pub authentication_timeout: Duration,
    /// Bytes that client messages buffered whole may take in all sessions together.
    pub client_buffer_budget: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            authentication_timeout: Duration::from_secs(60),
            client_buffer_budget: 256 * 1024 * 1024,
        }
    }
}

/// Accepts clients on `listener` until `shutdown` completes, then drains the sessions; with
/// the default `SessionLimits`.
pub async fn run<I: Interceptor>(
    listener: TcpListener,
    config: RelayConfig,
    interceptor: I,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_with_limits(
        listener,
        config,
        SessionLimits::default(),
        interceptor,
        shutdown,
    )
    .await
}

/// Accepts clients on `listener` until `shutdown` completes, then drains the sessions.
pub async fn run_with_limits<I: Interceptor>(
    listener: TcpListener,
    config: RelayConfig,
    limits: SessionLimits,
    interceptor: I,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        upstream: config.upstream,
        tls: config.tls,
        authentication_timeout: limits.authentication_timeout,
        budget: ClientBudget::new(limits.client_buffer_budget),
        limit: Arc::new(Semaphore::new(config.max_connections)),
        interceptor,
        next_id: AtomicU64::new(1),
        cut: cut_rx,
    });
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    sessions.spawn(connection::serve(tcp, peer, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        sessions = sessions.len(),
        "shutting down: no longer accepting"
    );
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "shutdown timeout reached: terminating remaining sessions"
        );
        // Each session sends its client a FATAL 57P01 and closes (a transaction still open
        // upstream is rolled back when its connection goes); any that cannot are cut.
        let _ = cut.send(true);
        let ended = tokio::time::timeout(CUT_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            sessions.shutdown().await;
        }
    }
    Ok(())
}
