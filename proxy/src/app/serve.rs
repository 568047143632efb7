//! `pgml-proxy serve`: wires the CLI options to the embedded Postgres (when no upstream is
//! given), the listener and the shutdown signals, and stops Postgres after the last session.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::args::RemoteArgs;
use crate::app::cli::ServeArgs;
use crate::app::embedded::{check_exposure, EmbeddedOptions, EmbeddedPostgres, SUPERUSER};
use crate::app::exposition::BackendMetrics;
use crate::app::upstream_trust;
use crate::error::{ProxyError, Result};
use crate::intercept::{InterceptConfig, Interception};
use crate::metrics::Metrics;
use crate::net::tls;
use crate::net::upstream::{SslMode, Upstream};
use crate::net::url::with_default_sslmode;
use crate::session::listener::{run_with_limits, RelayConfig};

/// Runs `serve` until SIGINT/SIGTERM (or stdin EOF with `--exit-on-stdin-eof`).
pub async fn serve(args: ServeArgs) -> Result<()> {
    if args.print_config {
        println!("{args:#?}");
        return Ok(());
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let shutdown = shutdown_signal(args.exit_on_stdin_eof);
    let (upstream, embedded) = match &args.upstream {
        Some(url) => (Upstream::from_url(url, args.upstream_sslmode)?, None),
        None => {
            let pg_dir = args.pg_dir.clone().ok_or_else(|| {
                ProxyError::Config(
                    "no --upstream, and no Postgres installation for the embedded Postgres \
                     (--pg-dir, PGML_PROXY_PG_DIR or pg-dir in the settings file): run `make \
                     setup` (it installs Postgres 16 + pgvector and records the path in \
                     pgml-proxy.toml next to the binary), or give --upstream postgres://HOST:PORT"
                        .into(),
                )
            })?;
            check_exposure(&args.listen, args.embedded_password.as_deref())?;
            let pg = EmbeddedPostgres::start(&EmbeddedOptions {
                pg_dir,
                data_dir: args.data_dir.clone(),
                port: args.embedded_port,
                superuser_password: args.embedded_password.clone(),
            })
            .await?;
            let upstream = match pg.socket() {
                Some(socket) => Upstream::unix(socket.to_owned()),
                None => Upstream::new("127.0.0.1", pg.port(), SslMode::Disable)?,
            };
            (upstream, Some(pg))
        }
    };
    // --upstream-sslmode applies to the service URL as if written in it (the URL's own wins
    // when stricter); the embedded Postgres has no TLS.
    let service_url = match (&args.service_url, &embedded, args.upstream_sslmode) {
        (Some(url), _, Some(mode)) => Some(with_default_sslmode(url, mode)),
        (Some(url), _, None) => Some(url.clone()),
        (None, Some(pg), _) => Some(with_default_sslmode(&pg.service_url(), SslMode::Disable)),
        (None, None, _) => None,
    };
    let result = async {
        let probe =
            upstream_trust::Probe::for_serve(args.upstream.as_deref(), service_url.as_deref())
                .await;
        let (shutdown, mut late_refusal) = upstream_trust::guard(
            &upstream,
            probe,
            args.dangerously_allow_passwordless_upstream,
        )
        .await?
        .or_refusal(shutdown);
        let result = listen_and_run(
            &args,
            upstream,
            tls,
            embedded.as_ref().map(EmbeddedPostgres::default_password),
            service_url,
            shutdown,
        )
        .await;
        late_refusal.try_recv().map_or(result, Err)
    }
    .await;
    if let Some(pg) = embedded {
        pg.stop().await?;
    }
    result
}

async fn listen_and_run(
    args: &ServeArgs,
    upstream: Upstream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    embedded_default_password: Option<bool>,
    service_url: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let engine =
        pgml_engine::Engine::new(args.engine.engine_config()).map_err(ProxyError::Engine)?;
    for model in &args.preload {
        use pgml_engine::Embedder;
        let started = std::time::Instant::now();
        engine
            .embed(model, vec!["warm-up".to_owned()], &serde_json::json!({}))
            .await
            .map_err(|e| ProxyError::Config(format!("--preload {model}: {e}")))?;
        tracing::info!(%model, elapsed = ?started.elapsed(), "model preloaded");
    }
    let metrics = Arc::new(Metrics::default());
    metrics.set_ready(true);
    tokio::spawn(watch_upstream(upstream.clone(), metrics.clone()));
    // pgml.rank is always local: remote backends serve embeddings only.
    let ranker: Arc<dyn pgml_engine::Ranker> = Arc::new(engine.clone());
    let local: Arc<dyn pgml_engine::Embedder> = Arc::new(engine.clone());
    let router = if args.remote.remote_model.is_empty() {
        None
    } else {
        // Remote vectors share the engine's cache (one --cache-mb budget).
        let router = pgml_engine::Router::from_specs(
            local.clone(),
            &args.remote.remote_model,
            args.remote.embed_config(),
            engine.cache(),
        )
        .map_err(|e| ProxyError::Config(format!("--remote-model: {e}")))?;
        tracing::info!(models = ?router.remote_models(), "remote embedding backends");
        Some(router)
    };
    let generator = Arc::new(generator(&args.remote)?);
    if let Some(addr) = &args.metrics_addr {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            ProxyError::Config(format!("cannot listen on --metrics-addr {addr}: {e}"))
        })?;
        let engine = engine.clone();
        let router = router.clone();
        let backends: Arc<dyn Fn() -> BackendMetrics + Send + Sync> =
            Arc::new(move || BackendMetrics {
                engine: Some(engine.metrics()),
                remote: router
                    .as_ref()
                    .map(pgml_engine::Router::remote_metrics)
                    .unwrap_or_default(),
            });
        tracing::info!(addr = %listener.local_addr()?, "metrics endpoint ready");
        tokio::spawn(crate::app::exposition::serve_http(
            listener,
            metrics.clone(),
            backends,
        ));
    }
    let embedder: Arc<dyn pgml_engine::Embedder> = match router {
        Some(router) => Arc::new(router),
        None => local,
    };
    let interception = Interception::new(
        embedder,
        ranker,
        generator,
        InterceptConfig {
            cancel_via: Some(upstream.clone()),
            service_url,
            service_sslmode: args.upstream_sslmode.unwrap_or(SslMode::Disable),
            upcall_timeout: Duration::from_millis(args.upcall_timeout_ms),
            service_connections_max: usize::try_from(args.service_connections_max)
                .unwrap_or(usize::MAX),
            cache_per_role: args.cache_scope == crate::app::cli::CacheScope::Role,
            datasets: args
                .datasets
                .settings(args.engine.downloads(), &args.engine.hub),
        },
        metrics,
    );
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| ProxyError::Config(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener.local_addr()?;
    if embedded_default_password == Some(true) {
        tracing::info!(
            "pgml-proxy ready; connect with: psql postgres://{SUPERUSER}:postgres@{local}/postgres"
        );
    } else if embedded_default_password == Some(false) {
        tracing::info!(
            "pgml-proxy ready; connect with: psql postgres://{SUPERUSER}@{local}/postgres \
             (password: the one given in --embedded-password)"
        );
    } else {
        tracing::info!(%local, upstream = ?upstream, "pgml-proxy ready");
    }
    let config = RelayConfig {
        upstream,
        tls,
        max_connections: args.max_connections,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        relay_threads: args.relay_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        relay_pinning: args.relay_pinning == "on",
        relay_core: args.relay_core == "on",
    };
    run_with_limits(
        listener,
        config,
        args.session_limits(),
        interception,
        shutdown,
    )
    .await
}

/// pgml.transform's model servers: the same `--remote-model` routes and remote settings as the
/// embedding router (a route serves whichever of the two its model is called with).
fn generator(remote: &RemoteArgs) -> Result<pgml_engine::Generator> {
    let specs = &remote.remote_model;
    if specs.is_empty() {
        return Ok(pgml_engine::Generator::none());
    }
    let routes = specs
        .iter()
        .map(|spec| pgml_engine::parse_remote_route(spec))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ProxyError::Config(format!("--remote-model: {e}")))?;
    let generator = pgml_engine::Generator::new(routes, remote.generate_config())
        .map_err(|e| ProxyError::Config(format!("--remote-model: {e}")))?;
    // The patterns only: a route's URL may carry credentials.
    let models: Vec<String> = generator.routes().into_iter().map(|(m, _)| m).collect();
    tracing::info!(?models, "pgml.transform model routes");
    Ok(generator)
}

/// Keeps readiness (`/readyz`) in step with whether the upstream accepts connections.
async fn watch_upstream(upstream: Upstream, metrics: Arc<Metrics>) {
    loop {
        let reachable = upstream.reachable().await;
        if reachable != metrics.is_ready() {
            tracing::info!(addr = %upstream.addr(), reachable, "upstream readiness changed");
        }
        metrics.set_ready(reachable);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Completes on SIGINT, SIGTERM, or (when asked) end of stdin.
fn shutdown_signal(exit_on_stdin_eof: bool) -> impl Future<Output = ()> {
    let stdin_eof = exit_on_stdin_eof.then(|| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A plain thread, not tokio's stdin: a blocking read there would hold up runtime shutdown.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        });
        rx
    });
    async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "cannot watch SIGTERM"))
            .ok();
        let sigterm = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let eof = async {
            match stdin_eof {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = sigterm => tracing::info!("SIGTERM received"),
            _ = eof => tracing::info!("stdin closed"),
        }
    }
}
