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

use crate::connection::{self, Shared};
use crate::error::Result;
use crate::hook::Interceptor;
use crate::upstream::Upstream;

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

/// Accepts clients on `listener` until `shutdown` completes, then drains the sessions.
pub async fn run<I: Interceptor>(
    listener: TcpListener,
    config: RelayConfig,
    interceptor: I,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = Arc::new(Shared {
        upstream: config.upstream,
        tls: config.tls,
        limit: Arc::new(Semaphore::new(config.max_connections)),
        interceptor,
        next_id: AtomicU64::new(1),
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
            "shutdown timeout reached: closing remaining sessions"
        );
        sessions.shutdown().await;
    }
    Ok(())
}
