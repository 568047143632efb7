//! The accept loop: admission of connections not yet authenticated (turned away at once over
//! their limits), one task per admitted connection, and graceful shutdown (stop accepting, let
//! sessions finish up to a timeout, then cut the rest).

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::error::{ProxyError, Result};
use crate::net::messages::error_response;
use crate::net::upstream::Upstream;
pub use crate::session::admission::PreAuthLimits;
use crate::session::admission::{Admission, Refused};
use crate::session::budget::ClientBudget;
use crate::session::connection::{self, Shared};
use crate::session::hook::{ConnectionEvent, Interceptor};
use crate::session::relay_threads::RelayThreads;

/// How long sessions get to deliver their FATAL once the shutdown timeout has passed.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// At most one log line per this interval for connections turned away at accept: a flood
/// would otherwise write one per socket.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Threads that run the sessions, each a single-threaded runtime driving its own sockets;
    /// 0 runs them on the caller's runtime.
    pub relay_threads: usize,
    /// Pin relay thread i to the i-th CPU the process may run on (when there is one thread
    /// per allowed CPU) and give each new connection to the thread on the CPU its packets
    /// arrive on; otherwise sessions are dealt round-robin and the OS places the threads.
    pub relay_pinning: bool,
    /// Give each relay thread a relay core (see `io::relay_core`): sessions that stay on the
    /// lean path are relayed there, on an epoll loop of its own, without the runtime.
    pub relay_core: bool,
}

/// What an unauthenticated or misbehaving client may cost the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// From accept to the first ReadyForQuery (Postgres' authentication_timeout, 60 s by
    /// default): the startup packet, TLS handshake and the whole authentication exchange.
    pub authentication_timeout: Duration,
    /// From accept to the StartupMessage (after any SSLRequest and TLS handshake), and for a
    /// CancelRequest to the end of its forwarding: a client that has not said who it is gets
    /// less time than one authenticating (10 s by default, like the part of PgBouncer's
    /// client_login_timeout before credentials), as its socket costs a descriptor and an
    /// unauthenticated place for nothing. Capped by `authentication_timeout`.
    pub startup_timeout: Duration,
    /// Connections not yet authenticated, in all and per source; over either, a new connection
    /// gets FATAL 53300 and is closed at once. They take no `max_connections` place until
    /// their StartupMessage, so a flood of idle sockets never holds one.
    pub pre_auth: PreAuthLimits,
    /// Bytes that client messages buffered whole may take in all sessions together.
    pub client_buffer_budget: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            authentication_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(10),
            pre_auth: PreAuthLimits::default(),
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
        startup_timeout: limits.startup_timeout.min(limits.authentication_timeout),
        budget: ClientBudget::new(limits.client_buffer_budget),
        limit: Arc::new(Semaphore::new(config.max_connections)),
        interceptor,
        next_id: AtomicU64::new(1),
        cut: cut_rx,
    });
    let mut threads = match config.relay_threads {
        0 => None,
        n => Some(RelayThreads::start(
            n,
            config.relay_pinning,
            config.relay_core,
        )?),
    };
    let admission = Admission::new(limits.pre_auth);
    let mut turned_away = RefusalLog::default();
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let pre_auth = match admission.admit(peer.ip()) {
                        Ok(pre_auth) => pre_auth,
                        Err(refused) => {
                            shared.interceptor.connection_event(ConnectionEvent::Unauthenticated {
                                per_source: refused == Refused::PerSource,
                            });
                            turned_away.note(refused, peer, admission.pending());
                            turn_away(tcp);
                            continue;
                        }
                    };
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    let shared = shared.clone();
                    match threads.as_mut() {
                        Some(threads) => sessions.spawn(threads.spawn(tcp, peer, pre_auth, shared)),
                        None => sessions.spawn(connection::serve(tcp, peer, pre_auth, shared, None)),
                    };
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

/// Answers a connection over an admission limit with FATAL 53300 and closes it, never waiting
/// on it (the accept loop must keep up with a flood): one non-blocking read of what the client
/// already sent (closing a socket with unread data resets the connection, which can discard
/// the answer before the client reads it), one non-blocking write (the empty send buffer of a
/// new socket takes it), then close. libpq reads an ErrorResponse in place of the answer to
/// SSLRequest too, as it does for Postgres' own refusals.
fn turn_away(tcp: TcpStream) {
    let Ok(tcp) = tcp.into_std() else {
        return;
    };
    let mut sent = [0u8; 1024];
    let _ = (&tcp).read(&mut sent);
    let _ = (&tcp).write(error_response::fatal(&ProxyError::TooManyConnections).as_bytes());
}

/// Connections turned away at accept, logged at most once per `REFUSAL_LOG_INTERVAL`.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn note(&mut self, refused: Refused, peer: SocketAddr, pending: usize) {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| last.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        self.last = Some(Instant::now());
        let limit = match refused {
            Refused::PerSource => "per source (--max-unauthenticated-per-source)",
            Refused::Total => "in all (--max-unauthenticated-connections)",
        };
        tracing::warn!(
            peer = %peer.ip(),
            turned_away = std::mem::take(&mut self.unlogged),
            unauthenticated = pending,
            "connections turned away with 53300: too many not yet authenticated {limit}"
        );
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
