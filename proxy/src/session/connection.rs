//! One client connection from accept to close: startup negotiation (or a CancelRequest's
//! forwarding) within the startup deadline, the connection limit, the upstream connection,
//! authentication relay within the authentication deadline, then the relay itself. Errors a
//! client should see become a FATAL ErrorResponse with their SQLSTATE.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
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
use crate::session::admission::PreAuth;
use crate::session::auth::{authenticate, Authentication};
use crate::session::budget::ClientBudget;
use crate::session::hook::{ConnectionEvent, Interceptor, SessionHook, SessionInfo};
use crate::session::io::relay_core::CoreHandle;
use crate::session::io::SessionIo;
use crate::session::relay::{relay, relay_with_core};
use crate::session::state::SessionState;

/// What every connection shares.
pub(crate) struct Shared<I> {
    pub(crate) upstream: Upstream,
    pub(crate) tls: Option<TlsAcceptor>,
    /// From accept to the first ReadyForQuery.
    pub(crate) authentication_timeout: Duration,
    /// From accept to the StartupMessage, or to the end of a CancelRequest's forwarding.
    pub(crate) startup_timeout: Duration,
    /// Shared by every session's buffered client messages.
    pub(crate) budget: ClientBudget,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) interceptor: I,
    pub(crate) next_id: AtomicU64,
    /// Turns true when the shutdown timeout has passed: sessions still open end with a FATAL
    /// 57P01 (admin_shutdown), as Postgres' own fast shutdown does.
    pub(crate) cut: watch::Receiver<bool>,
}

/// Serves one accepted connection to its end, logging how it ended; `pre_auth`, its place
/// among the connections not yet authenticated, is given back once it authenticates.
pub(crate) async fn serve<I: Interceptor>(
    tcp: TcpStream,
    peer: SocketAddr,
    pre_auth: PreAuth,
    shared: Arc<Shared<I>>,
    core: Option<CoreHandle>,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    // Entered by everything but the relay's lean path (see `relay`): a span entered on every
    // wake-up of a busy session costs as much as the rest of its pass-through work.
    let span = tracing::info_span!("session", id, %peer);
    let started = Instant::now();
    let result = handle(tcp, peer, pre_auth, id, &shared, &span, core).await;
    if let Err(ProxyError::ClientProtocol(_)) = &result {
        shared
            .interceptor
            .connection_event(ConnectionEvent::ClientProtocolError);
    }
    span.in_scope(|| match result {
        Ok(()) => tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "closed"),
        Err(err) => tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            sqlstate = err.sqlstate(),
            error = %err,
            "closed with error"
        ),
    });
}

/// A session whose upstream connection is open and its StartupMessage queued.
struct Opened<H> {
    client_io: SessionIo,
    hook: H,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

async fn handle<I: Interceptor>(
    tcp: TcpStream,
    peer: SocketAddr,
    pre_auth: PreAuth,
    id: u64,
    shared: &Shared<I>,
    span: &tracing::Span,
    core: Option<CoreHandle>,
) -> Result<()> {
    // Like Postgres' authentication_timeout, one deadline covers everything before the first
    // ReadyForQuery, so a client that stalls anywhere in it holds its slot for no longer. The
    // part before the client says who it is has a shorter one: an idle socket costs a
    // descriptor and an unauthenticated place, and a real client sends its StartupMessage at once.
    let accepted = tokio::time::Instant::now();
    let deadline = accepted + shared.authentication_timeout;
    let startup_deadline = accepted + shared.startup_timeout;
    let opened = open(tcp, peer, id, shared, startup_deadline)
        .instrument(span.clone())
        .await?;
    let Some(Opened {
        client_io: mut io,
        mut hook,
        _permit,
    }) = opened
    else {
        return Ok(());
    };
    let session = async {
        let authenticated = tokio::time::timeout_at(deadline, authenticate(&mut io))
            .instrument(span.clone())
            .await
            .map_err(|_| {
                ProxyError::ClientProtocol("canceling authentication due to timeout".into())
            })??;
        match authenticated {
            Authentication::Done => {
                // Authenticated: its unauthenticated place goes to the next client.
                drop(pre_auth);
                match &core {
                    Some(core) => relay_with_core(&mut io, hook, span, core).await,
                    None => relay(&mut io, &mut hook, span).await,
                }
            }
            Authentication::Refused(sqlstate) => {
                let authentication = sqlstate.starts_with("28");
                shared
                    .interceptor
                    .connection_event(ConnectionEvent::StartupRefused { authentication });
                io.flush().await
            }
            Authentication::Closed => Ok(()),
        }
    };
    let result = until_cut(session, &shared.cut).await;
    if let Err(err) = &result {
        if !matches!(err, ProxyError::Io(_)) {
            io.send_fatal(err).instrument(span.clone()).await;
        }
    }
    result
}

/// Runs `session` until it ends or the shutdown timeout cuts it (`ProxyError::Shutdown`). The
/// cut's future is polled once to register the task's waker, then only once the cut has been
/// sent: not on every wake-up of a busy session, as a `select!` would.
async fn until_cut<F: Future<Output = Result<()>>>(
    session: F,
    cut: &watch::Receiver<bool>,
) -> Result<()> {
    let seen = cut.clone();
    let mut waiter = cut.clone();
    let mut cut_wait = std::pin::pin!(waiter.wait_for(|&cut| cut));
    let mut session = std::pin::pin!(session);
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = session.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        // Changed (or its sender gone): the cut's future says which. Its waker stays
        // registered until then, so it need not be polled in between.
        if !registered || seen.has_changed().unwrap_or(true) {
            registered = true;
            if cut_wait.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(ProxyError::Shutdown));
            }
        }
        Poll::Pending
    })
    .await
}

/// Startup up to the upstream connection: None when there is no session to serve (a
/// CancelRequest, forwarded), an error when it is refused (the client was told why).
async fn open<I: Interceptor>(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared<I>,
    startup_deadline: tokio::time::Instant,
) -> Result<Option<Opened<I::Hook>>> {
    let opening = tokio::time::timeout_at(startup_deadline, negotiate(tcp, shared.tls.as_ref()))
        .await
        .map_err(|_| ProxyError::ClientProtocol("timeout during startup".into()))??;
    let (mut client, startup, leftover) = match opening {
        Opening::Cancel(body) => {
            // Forwarded within the startup deadline and while holding its unauthenticated place:
            // a flood of CancelRequests opens no more upstream connections than the admission
            // limits allow, each for no longer. Postgres answers a CancelRequest with nothing,
            // so the client learns nothing either way.
            tracing::debug!("forwarding CancelRequest");
            let forwarded =
                tokio::time::timeout_at(startup_deadline, shared.upstream.cancel(&body)).await;
            if forwarded.is_err() {
                tracing::debug!("CancelRequest forwarding cut at the startup deadline");
            }
            return forwarded.unwrap_or(Ok(())).map(|()| None);
        }
        Opening::Session {
            stream,
            startup,
            leftover,
        } => (stream, startup, leftover),
    };
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
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
    Ok(Some(Opened {
        client_io: io,
        hook,
        _permit: permit,
    }))
}

/// Tells the client why it cannot be served, then closes.
async fn refuse<T>(client: &mut PgStream, err: ProxyError) -> Result<T> {
    let _ = client
        .write_all(error_response::fatal(&err).as_bytes())
        .await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    Err(err)
}
