//! One client connection from accept to close: startup negotiation, the connection limit,
//! the upstream connection, authentication relay, then the relay itself. Errors a client
//! should see become a FATAL ErrorResponse with their SQLSTATE.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::error::{ProxyError, Result};
use crate::net::messages::error_response;
use crate::net::startup::{negotiate, Opening};
use crate::net::stream::PgStream;
use crate::net::upstream::Upstream;
use crate::session::auth::{authenticate, Authentication};
use crate::session::budget::ClientBudget;
use crate::session::hook::{ConnectionEvent, Interceptor, SessionHook, SessionInfo};
use crate::session::io::SessionIo;
use crate::session::relay::relay;
use crate::session::state::SessionState;

/// What every connection shares.
pub(crate) struct Shared<I> {
    pub(crate) upstream: Upstream,
    pub(crate) tls: Option<TlsAcceptor>,
    /// From accept to the first ReadyForQuery.
    pub(crate) authentication_timeout: Duration,
    /// Shared by every session's buffered client messages.
    pub(crate) budget: ClientBudget,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) interceptor: I,
    pub(crate) next_id: AtomicU64,
    /// Turns true when the shutdown timeout has passed: sessions still open end with a FATAL
    /// 57P01 (admin_shutdown), as Postgres' own fast shutdown does.
    pub(crate) cut: watch::Receiver<bool>,
}

/// Serves one accepted connection to its end, logging how it ended.
pub(crate) async fn serve<I: Interceptor>(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<I>>,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", id, %peer);
    async move {
        let started = Instant::now();
        let result = handle(tcp, peer, id, &shared).await;
        if let Err(ProxyError::ClientProtocol(_)) = &result {
            shared
                .interceptor
                .connection_event(ConnectionEvent::ClientProtocolError);
        }
        match result {
            Ok(()) => tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "closed"),
            Err(err) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                sqlstate = err.sqlstate(),
                error = %err,
                "closed with error"
            ),
        }
    }
    .instrument(span)
    .await
}

async fn handle<I: Interceptor>(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared<I>,
) -> Result<()> {
    // Like Postgres' authentication_timeout, one deadline covers everything before the first
    // ReadyForQuery, so a client that stalls anywhere in it holds its slot for no longer.
    let deadline = tokio::time::Instant::now() + shared.authentication_timeout;
    let opening = tokio::time::timeout_at(deadline, negotiate(tcp, shared.tls.as_ref()))
        .await
        .map_err(|_| ProxyError::ClientProtocol("timeout during startup".into()))??;
    let (mut client, startup, leftover) = match opening {
        Opening::Cancel(body) => {
            tracing::debug!("forwarding CancelRequest");
            return shared.upstream.cancel(&body).await;
        }
        Opening::Session {
            stream,
            startup,
            leftover,
        } => (stream, startup, leftover),
    };
    let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
        shared
            .interceptor
            .connection_event(ConnectionEvent::TooManyConnections);
        return refuse(&mut client, ProxyError::TooManyConnections).await;
    };
    tracing::debug!(
        user = startup.param("user").unwrap_or_default(),
        database = startup.param("database").unwrap_or_default(),
        tls = client.is_tls(),
        "startup"
    );
    let mut hook = shared.interceptor.session(&SessionInfo {
        id,
        peer,
        startup: &startup,
    });
    let mut upstream_startup = startup.clone();
    hook.upstream_startup(&mut upstream_startup);
    let connected = Instant::now();
    let upstream = match shared.upstream.connect().await {
        Ok(upstream) => upstream,
        Err(err) => {
            shared
                .interceptor
                .connection_event(ConnectionEvent::UpstreamConnectFailed);
            return refuse(&mut client, err).await;
        }
    };
    tracing::debug!(
        connect_ms = connected.elapsed().as_millis() as u64,
        "upstream connected"
    );
    let mut io = SessionIo::new(
        client,
        upstream,
        leftover,
        SessionState::new(id),
        shared.budget.clone(),
    );
    io.send_upstream_raw(&upstream_startup.encode());
    let mut cut = shared.cut.clone();
    let session = async {
        let authenticated = tokio::time::timeout_at(deadline, authenticate(&mut io))
            .await
            .map_err(|_| {
                ProxyError::ClientProtocol("canceling authentication due to timeout".into())
            })??;
        match authenticated {
            Authentication::Done => relay(&mut io, &mut hook).await,
            Authentication::Refused(sqlstate) => {
                let authentication = sqlstate.starts_with("28");
                shared
                    .interceptor
                    .connection_event(ConnectionEvent::StartupRefused { authentication });
                Ok(())
            }
            Authentication::Closed => Ok(()),
        }
    };
    let result = tokio::select! {
        biased;
        result = session => result,
        _ = cut.wait_for(|&cut| cut) => Err(ProxyError::Shutdown),
    };
    if let Err(err) = &result {
        if !matches!(err, ProxyError::Io(_)) {
            io.send_fatal(err).await;
        }
    }
    result
}

/// Tells the client why it cannot be served, then closes.
async fn refuse(client: &mut PgStream, err: ProxyError) -> Result<()> {
    let _ = client
        .write_all(error_response::fatal(&err).as_bytes())
        .await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    Err(err)
}
