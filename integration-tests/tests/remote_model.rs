//! `--remote-model` end to end: the real proxy binary (embedded Postgres) routes models to
//! real HTTP embedding servers in this process (the engine tests' `embed_server`: TEI's
//! `/embed`, vectors from the local engine). The vector a client gets is the one the server
//! sent; a repeated text is served from the cache; a server that fails or cannot be reached
//! gives a clear error with its SQLSTATE and the session goes on; the remote, statement and
//! embedding series move in /metrics. Also: every query of docker/grafana-dashboard.json
//! names a series /metrics exposes, and connection refusals and errors are counted.

#[path = "../../engine/tests/support/embed_server.rs"]
mod embed_server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use embed_server::{Seen, Server, State};
use pgml_engine::{Engine, EngineConfig};
use pgml_integration_tests::{
    connect, free_port, required_env, scratch_dir, startup_packet, workspace_dir, Proxy,
    DEFAULT_MODEL,
};
use serde_json::Value;

/// Served by the healthy server.
const REMOTE: &str = "acme/remote-minilm";
/// Served by a server that answers 503 to everything.
const OVERLOADED: &str = "acme/remote-overloaded";
/// Routed to a port nobody listens on.
const DOWN: &str = "acme/remote-down";

/// A server running on its own thread and runtime for the whole test binary.
struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Backend {
    fn start(engine: Engine) -> Backend {
        let (ready, started) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let server = Server::start(engine).await;
                ready
                    .send((server.addr, Arc::clone(&server.state)))
                    .expect("report the address");
                // Serve until the test binary exits.
                std::future::pending::<()>().await;
            });
        });
        let (addr, state) = started.recv().expect("server started");
        Backend { addr, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen()
    }

    /// The requests that carried `text`.
    fn seen_with(&self, text: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.inputs.iter().any(|i| i == text))
            .collect()
    }

    fn backend_label(&self) -> String {
        format!("http://{}/embed", self.addr)
    }
}

struct Setup {
    healthy: Backend,
    overloaded: Backend,
    down: SocketAddr,
    proxy: Proxy,
    pg_port: u16,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        required_env("HF_HOME");
        required_env("ORT_DYLIB_PATH");
        let engine = Engine::new(EngineConfig {
            allow_download: false,
            cache_bytes: 0,
            intra_threads: Some(1),
            ..EngineConfig::default()
        })
        .expect("the servers' engine");
        let healthy = Backend::start(engine.clone());
        let overloaded = Backend::start(engine);
        overloaded
            .state
            .fail_next
            .store(usize::MAX, Ordering::SeqCst);
        let down = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let pg_port = free_port();
        let metrics_port = free_port();
        let data_dir = scratch_dir().join("pgdata");
        let routes = [
            format!("{REMOTE}=tei+http://{}", healthy.addr),
            format!("{OVERLOADED}=tei+http://{}", overloaded.addr),
            format!("{DOWN}=tei+http://{down}"),
        ];
        let mut args = vec![
            "--pg-dir".to_owned(),
            required_env("PGML_PROXY_PG_DIR"),
            "--data-dir".to_owned(),
            data_dir.to_str().expect("utf-8 temp dir").to_owned(),
            "--embedded-port".to_owned(),
            pg_port.to_string(),
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
            "--shutdown-timeout".to_owned(),
            "2".to_owned(),
            "--offline".to_owned(),
        ];
        for route in routes {
            args.push("--remote-model".to_owned());
            args.push(route);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proxy = Proxy::spawn("remote", &args);
        proxy.pg_port = Some(pg_port);
        proxy.metrics_port = Some(metrics_port);
        Setup {
            healthy,
            overloaded,
            down,
            proxy,
            pg_port,
        }
    })
}

/// `name{model="...",backend="..."}`.
fn remote_series(name: &str, model: &str, backend: &Backend) -> String {
    format!(
        "{name}{{model=\"{model}\",backend=\"{}\"}}",
        backend.backend_label()
    )
}

/// The vector the server answered for the single text of `seen`.
fn answered(seen: &Seen) -> Vec<f32> {
    let vectors: Vec<Vec<f32>> =
        serde_json::from_value(seen.response.clone()).expect("TEI answers a list of vectors");
    assert_eq!(vectors.len(), 1);
    vectors.into_iter().next().expect("one vector")
}

#[tokio::test]
async fn a_remote_model_serves_the_servers_vectors_and_caches_them() {
    let s = setup();
    let client = connect(&s.proxy.url()).await.expect("through the proxy");
    let text = "What the remote server computes for this sentence.";
    let embed_count = format!("pgml_proxy_embedding_duration_seconds_count{{model=\"{REMOTE}\"}}");
    let before_embeds = s.proxy.metric(&embed_count);
    let before_hits = s.proxy.metric("pgml_proxy_engine_cache_hits_total");
    let constant_count = "pgml_proxy_statement_duration_seconds_count{path=\"constant\"}";
    let before_constant = s.proxy.metric(constant_count);

    let sql = format!("SELECT pgml.embed('{REMOTE}', '{text}')");
    let got: Vec<f32> = client.query_one(&sql, &[]).await.unwrap().get(0);
    let seen = s.healthy.seen_with(text);
    assert_eq!(seen.len(), 1, "one request for the text: {seen:?}");
    assert_eq!(seen[0].path, "/embed");
    assert_eq!(got, answered(&seen[0]), "bit for bit what the server sent");
    assert_eq!(got.len(), 384);

    let requests = remote_series("pgml_proxy_remote_requests_total", REMOTE, &s.healthy);
    assert!(s.proxy.metric(&requests) >= 1.0, "{requests}");
    let latency = remote_series(
        "pgml_proxy_remote_request_duration_seconds_count",
        REMOTE,
        &s.healthy,
    );
    assert!(s.proxy.metric(&latency) >= 1.0, "{latency}");
    assert!(s.proxy.metric(&embed_count) > before_embeds);
    assert!(s.proxy.metric(constant_count) > before_constant);

    // Again, in the simple and then the extended protocol: the cache answers.
    let again: Vec<f32> = client.query_one(&sql, &[]).await.unwrap().get(0);
    let bound: Vec<f32> = client
        .query_one(
            &format!("SELECT pgml.embed('{REMOTE}', $1::text)"),
            &[&text],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((&again, &bound), (&got, &got));
    assert_eq!(s.healthy.seen_with(text).len(), 1, "no new request");
    assert!(s.proxy.metric("pgml_proxy_engine_cache_hits_total") >= before_hits + 2.0);
}

#[tokio::test]
async fn remote_failures_are_clear_errors_and_the_session_goes_on() {
    let s = setup();
    let mut client = connect(&s.proxy.url()).await.expect("through the proxy");
    let err = client
        .query_one(&format!("SELECT pgml.embed('{OVERLOADED}', 'x')"), &[])
        .await
        .expect_err("the server answers 503");
    let db = err.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "XX000", "{db:?}");
    let message = db.message();
    assert!(
        message.contains("503") && message.contains("overloaded") && message.contains("4 attempts"),
        "{message}"
    );
    assert!(
        message.contains(&s.overloaded.addr.to_string()),
        "{message}"
    );
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session survives");

    let err = client
        .query_one(&format!("SELECT pgml.embed('{DOWN}', $1::text)"), &[&"y"])
        .await
        .expect_err("nobody listens");
    let db = err.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "08001", "{db:?}");
    assert!(
        db.message().contains(&s.down.to_string()),
        "{}",
        db.message()
    );
    assert!(db.message().contains("unreachable"), "{}", db.message());
    let tx = client.transaction().await.expect("begin after an error");
    let two: i32 = tx.query_one("SELECT 2", &[]).await.unwrap().get(0);
    tx.commit().await.unwrap();
    assert_eq!(two, 2);

    // 1 + 3 retries, one error the client saw.
    let series = |name| remote_series(name, OVERLOADED, &s.overloaded);
    assert_eq!(
        s.proxy.metric(&series("pgml_proxy_remote_requests_total")),
        4.0
    );
    assert_eq!(
        s.proxy.metric(&series("pgml_proxy_remote_retries_total")),
        3.0
    );
    assert_eq!(
        s.proxy.metric(&series("pgml_proxy_remote_errors_total")),
        1.0
    );
    assert_eq!(
        s.proxy
            .metric(&series("pgml_proxy_remote_request_duration_seconds_count")),
        4.0
    );
    assert_eq!(s.overloaded.seen().len(), 4);
}

/// Every metric name in the dashboard's queries, e.g. `pgml_proxy_statements_total`.
fn dashboard_metric_names(dashboard: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    let mut names = Vec::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("pgml_proxy_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push((tail[..end].to_owned(), expr.clone()));
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dashboard_plots_only_series_the_proxy_exposes() {
    let s = setup();
    let client = connect(&s.proxy.url()).await.expect("through the proxy");
    // Traffic on every path (one Query each: a Query is timed as a whole, by its slowest
    // path), a local model and a remote one.
    for sql in [
        "SELECT 1".to_owned(),
        format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'dashboard')"),
        format!("SELECT pgml.embed('{REMOTE}', 'dashboard')"),
        format!("SELECT pgml.embed('{DEFAULT_MODEL}', t) FROM (VALUES ('a'), ('b')) v(t)"),
        format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'upcalled ' || pg_backend_pid()); END $$"
        ),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }
    let text = s.proxy.http_get("/metrics");
    let exposed: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for path in ["passthrough", "constant", "prefetch", "upcall"] {
        let series = format!("pgml_proxy_statement_duration_seconds_count{{path=\"{path}\"}}");
        assert!(s.proxy.metric(&series) >= 1.0, "{series}\n{text}");
    }
    assert!(s.proxy.metric("pgml_proxy_upcall_duration_seconds_count") >= 1.0);
    assert!(s.proxy.metric("pgml_proxy_engine_queue_wait_seconds_count") >= 1.0);
    let local = format!("pgml_proxy_embedding_duration_seconds_count{{model=\"{DEFAULT_MODEL}\"}}");
    assert!(s.proxy.metric(&local) >= 1.0, "{local}");

    let file = workspace_dir().join("docker/grafana-dashboard.json");
    let json = std::fs::read_to_string(&file).expect("docker/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&json).expect("the dashboard is valid JSON");
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let names = dashboard_metric_names(&dashboard);
    assert!(names.len() >= 12, "{names:?}");
    for (name, expr) in &names {
        assert!(
            exposed.contains(&name.as_str()),
            "{name} (in `{expr}`) is not a series of /metrics:\n{text}"
        );
    }
    // And the other way: every family /metrics exposes is on some panel.
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let family = family.split(' ').next().unwrap_or_default();
        assert!(
            names.iter().any(|(n, _)| n.starts_with(family)),
            "{family} is on no panel of the dashboard"
        );
    }
}

/// Sends `bytes` on a fresh connection and returns everything answered before the close.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    answer
}

#[tokio::test]
async fn refusals_and_connection_errors_are_counted_by_reason() {
    let s = setup();
    let direct = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/postgres",
        s.pg_port
    );
    let admin = connect(&direct).await.unwrap();
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS metrics_user; \
             SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE metrics_user LOGIN PASSWORD 'right-pw'",
        )
        .await
        .unwrap();
    let auth = "pgml_proxy_connections_refused_total{reason=\"auth_failure\"}";
    let before = s.proxy.metric(auth);
    let Err(err) = connect(&s.proxy.config_for("metrics_user", "wrong-pw")).await else {
        panic!("wrong password must fail");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    assert_eq!(s.proxy.metric(auth), before + 1.0);

    // A proxy of one connection: the second is refused; garbage is a protocol error.
    let metrics_port = free_port();
    let mut limited = Proxy::spawn(
        "remote-limited",
        &[
            "--upstream",
            &direct,
            "--max-connections",
            "1",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    limited.metrics_port = Some(metrics_port);
    let held = connect(&limited.url()).await.expect("the one connection");
    let Err(err) = connect(&limited.url()).await else {
        panic!("past --max-connections");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    assert_eq!(
        limited.metric("pgml_proxy_connections_refused_total{reason=\"max_connections\"}"),
        1.0
    );
    drop(held);
    // The garbage fails the startup before the connection limit is consulted.
    let answer = exchange(limited.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!answer.is_empty());
    let protocol = "pgml_proxy_client_protocol_errors_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while limited.metric(protocol) < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(limited.metric(protocol), 1.0);

    // A proxy whose upstream is gone: each session is an upstream connect error.
    let gone_port = free_port();
    let metrics_port = free_port();
    let mut orphan = Proxy::spawn(
        "remote-orphan",
        &[
            "--upstream",
            &format!("postgres://127.0.0.1:{gone_port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    orphan.metrics_port = Some(metrics_port);
    let answer = exchange(
        orphan.port,
        &startup_packet(&[("user", "postgres"), ("database", "postgres")]),
    );
    assert!(!answer.is_empty(), "a FATAL");
    assert_eq!(
        orphan.metric("pgml_proxy_upstream_connect_errors_total"),
        1.0
    );
}
