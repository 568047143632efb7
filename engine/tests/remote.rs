//! The remote backend and the router against a real HTTP/1.1 server started by each test on
//! 127.0.0.1:0 (`support/embed_server.rs`: TEI's `/embed` and OpenAI's `/v1/embeddings`, real
//! vectors from the local engine, no mock objects).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

#[path = "support/embed_server.rs"]
mod embed_server;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_server::{Server, MODEL};
use pgml_engine::{
    Embedder, Engine, EngineConfig, EngineError, RemoteConfig, RemoteEmbedder, Router,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

fn engine() -> Engine {
    for name in ["HF_HOME", "ORT_DYLIB_PATH"] {
        assert!(
            std::env::var_os(name).is_some(),
            "{name} must be set (run via make test or load .cache/env.mk)"
        );
    }
    // No cache: the server and the reference both run the model for every text.
    Engine::new(EngineConfig {
        allow_download: false,
        cache_bytes: 0,
        intra_threads: Some(1),
        ..EngineConfig::default()
    })
    .expect("engine")
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Sentence number {i} is about topic {} and nothing else.",
                i * 7 % 5
            )
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (norm(a) * norm(b)).max(1e-12)
}

fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn assert_same(remote: &[Vec<f32>], local: &[Vec<f32>]) {
    assert_eq!(remote.len(), local.len());
    for (i, (r, l)) in remote.iter().zip(local).enumerate() {
        assert_eq!(r.len(), l.len(), "dimension of vector {i}");
        let c = cosine(r, l);
        assert!(c >= 0.9999, "vector {i}: cosine {c}");
    }
}

fn quick(config: RemoteConfig) -> RemoteConfig {
    RemoteConfig {
        timeout: Duration::from_secs(10),
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..config
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_vectors_match_the_local_engine_across_batch_chunks() {
    let local = engine();
    let server = Server::start(local.clone()).await;
    let remote = RemoteEmbedder::new(
        &server.url("tei"),
        quick(RemoteConfig {
            max_batch: 2,
            token: Some("s3cret".into()),
            ..RemoteConfig::default()
        }),
    )
    .expect("remote");
    let input = texts(5);
    let got = remote
        .embed(MODEL, input.clone(), &Value::Null)
        .await
        .expect("remote embed");
    let want = local
        .embed(MODEL, input.clone(), &Value::Null)
        .await
        .expect("local embed");
    assert_same(&got, &want);
    // Each text's vector is closest to its own reference: the order survived chunking.
    for (i, g) in got.iter().enumerate() {
        let best = (0..want.len())
            .max_by(|&a, &b| cosine(g, &want[a]).total_cmp(&cosine(g, &want[b])))
            .expect("nonempty");
        assert_eq!(best, i);
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "5 texts in chunks of 2: {seen:?}");
    let mut sent: Vec<String> = seen.iter().flat_map(|s| s.inputs.clone()).collect();
    sent.sort();
    let mut expected = input;
    expected.sort();
    assert_eq!(sent, expected);
    for s in &seen {
        assert_eq!(s.path, "/embed");
        assert!(s.inputs.len() <= 2);
        assert_eq!(s.authorization.as_deref(), Some("Bearer s3cret"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_vectors_match_the_local_engine_in_input_order() {
    let local = engine();
    let server = Server::start(local.clone()).await;
    let remote = RemoteEmbedder::new(
        &server.url("openai"),
        quick(RemoteConfig {
            max_batch: 3,
            max_concurrency: 2,
            ..RemoteConfig::default()
        }),
    )
    .expect("remote");
    let input = texts(10);
    let got = remote
        .embed(MODEL, input.clone(), &Value::Null)
        .await
        .expect("remote embed");
    let want = local
        .embed(MODEL, input, &Value::Null)
        .await
        .expect("local embed");
    assert_same(&got, &want);
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "10 texts in chunks of 3");
    for s in &seen {
        assert_eq!(s.path, "/v1/embeddings");
        assert_eq!(s.model.as_deref(), Some(MODEL));
        assert_eq!(s.authorization, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_truncate_dim_and_normalize_match_the_local_engine() {
    let local = engine();
    let server = Server::start(local.clone()).await;
    let kwargs = json!({"prompt": "query: ", "truncate_dim": 64, "normalize_embeddings": true});
    for api in ["tei", "openai"] {
        let remote =
            RemoteEmbedder::new(&server.url(api), quick(RemoteConfig::default())).expect("remote");
        let got = remote
            .embed(MODEL, texts(3), &kwargs)
            .await
            .expect("remote embed");
        let want = local
            .embed(MODEL, texts(3), &kwargs)
            .await
            .expect("local embed");
        assert_same(&got, &want);
        for v in &got {
            assert_eq!(v.len(), 64);
            assert!((norm(v) - 1.0).abs() < 1e-4, "{api}: norm {}", norm(v));
        }
        // Without normalize_embeddings a truncated MiniLM vector is not unit length.
        let raw = remote
            .embed(MODEL, texts(1), &json!({"truncate_dim": 64}))
            .await
            .expect("remote embed");
        assert!(norm(&raw[0]) < 0.99, "{api}: norm {}", norm(&raw[0]));
    }
    // Per API: 3 prompted texts, then 1 plain one; the prompt travels as a prefix.
    let sent: Vec<String> = server
        .seen()
        .iter()
        .flat_map(|s| s.inputs.clone())
        .collect();
    let prompted = sent
        .iter()
        .filter(|t| t.starts_with("query: Sentence"))
        .count();
    assert_eq!((sent.len(), prompted), (8, 6), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dimension_is_probed_once_and_cached() {
    let server = Server::start(engine()).await;
    let remote =
        RemoteEmbedder::new(&server.url("tei"), quick(RemoteConfig::default())).expect("remote");
    assert_eq!(
        remote.dimension(MODEL, &Value::Null).await.expect("dim"),
        384
    );
    assert_eq!(
        remote
            .dimension(MODEL, &json!({"truncate_dim": 128}))
            .await
            .expect("dim"),
        128
    );
    let err = remote
        .dimension(MODEL, &json!({"truncate_dim": 1000}))
        .await
        .expect_err("too wide");
    assert_eq!(err.sqlstate(), "22023");
    assert!(err.to_string().contains("truncate_dim"), "{err}");
    assert_eq!(server.seen().len(), 1, "one probe request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kwargs_a_remote_backend_cannot_honour_are_refused_before_sending() {
    let server = Server::start(engine()).await;
    for (api, kwargs, key) in [
        (
            "tei",
            json!({"instruction": "Represent the question: "}),
            "instruction",
        ),
        ("openai", json!({"truncate": true}), "truncate"),
        ("tei", json!({"file_name": "onnx/model.onnx"}), "file_name"),
    ] {
        let remote =
            RemoteEmbedder::new(&server.url(api), quick(RemoteConfig::default())).expect("remote");
        let err = remote
            .embed(MODEL, texts(1), &kwargs)
            .await
            .expect_err("refused");
        assert_eq!(err.sqlstate(), "22023", "{err}");
        assert!(err.to_string().contains(&format!("\"{key}\"")), "{err}");
    }
    assert!(server.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_then_served() {
    let local = engine();
    let server = Server::start(local.clone()).await;
    server.state.fail_next.store(1, Ordering::SeqCst);
    let remote =
        RemoteEmbedder::new(&server.url("tei"), quick(RemoteConfig::default())).expect("remote");
    let got = remote
        .embed(MODEL, texts(2), &Value::Null)
        .await
        .expect("retried");
    let want = local
        .embed(MODEL, texts(2), &Value::Null)
        .await
        .expect("local");
    assert_same(&got, &want);
    let statuses: Vec<u16> = server.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![503, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_5xx_gives_up_after_the_retry_budget() {
    let server = Server::start(engine()).await;
    server.state.fail_next.store(100, Ordering::SeqCst);
    let remote = RemoteEmbedder::new(
        &server.url("openai"),
        quick(RemoteConfig {
            retries: 2,
            ..RemoteConfig::default()
        }),
    )
    .expect("remote");
    let err = remote
        .embed(MODEL, texts(1), &Value::Null)
        .await
        .expect_err("gives up");
    assert!(matches!(err, EngineError::RemoteResponse { .. }), "{err:?}");
    assert_eq!(err.sqlstate(), "XX000");
    let message = err.to_string();
    assert!(
        message.contains("503") && message.contains("overloaded"),
        "{message}"
    );
    assert!(message.contains("3 attempts"), "{message}");
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_status_is_reported_and_not_retried() {
    let server = Server::start(engine()).await;
    let remote =
        RemoteEmbedder::new(&server.url("openai"), quick(RemoteConfig::default())).expect("remote");
    let err = remote
        .embed("acme/no-such-model", texts(1), &Value::Null)
        .await
        .expect_err("404");
    assert_eq!(err.sqlstate(), "XX000");
    let message = err.to_string();
    assert!(
        message.contains("404") && message.contains("acme/no-such-model"),
        "{message}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_with_a_clear_error() {
    let server = Server::start(engine()).await;
    server.state.stall.store(true, Ordering::SeqCst);
    let timeout = Duration::from_millis(400);
    let remote = RemoteEmbedder::new(
        &server.url("tei"),
        RemoteConfig {
            timeout,
            ..quick(RemoteConfig::default())
        },
    )
    .expect("remote");
    let started = Instant::now();
    let err = remote
        .embed(MODEL, texts(1), &Value::Null)
        .await
        .expect_err("times out");
    let elapsed = started.elapsed();
    assert!(matches!(err, EngineError::RemoteTimeout { .. }), "{err:?}");
    assert_eq!(err.sqlstate(), "08006");
    assert!(err.to_string().contains("did not answer within"), "{err}");
    // The stalled server sleeps 30 s: the upper bound only tells the timeout from that.
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_connection_error_after_bounded_retries() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    // Credentials in the route URL: the error reaches clients and must not carry them.
    let remote = RemoteEmbedder::new(
        &format!("tei+http://embedder:hunter2@{addr}"),
        quick(RemoteConfig {
            retries: 2,
            ..RemoteConfig::default()
        }),
    )
    .expect("remote");
    let started = Instant::now();
    let err = remote
        .embed(MODEL, texts(1), &Value::Null)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, EngineError::RemoteUnreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), "08001");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    // Bounded retries (backoff 20..100 ms): an upper bound on a retry loop that would not end.
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_missing_vectors_is_an_error() {
    let server = Server::start(engine()).await;
    server.state.short.store(true, Ordering::SeqCst);
    let remote =
        RemoteEmbedder::new(&server.url("tei"), quick(RemoteConfig::default())).expect("remote");
    let err = remote
        .embed(MODEL, texts(2), &Value::Null)
        .await
        .expect_err("short");
    assert_eq!(err.sqlstate(), "XX000");
    assert!(
        err.to_string().contains("sent 2 texts, got 1 vectors"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_sends_routed_models_remote_and_the_rest_local() {
    let local = engine();
    let server = Server::start(local.clone()).await;
    let routed = "acme/remote-minilm";
    let router = Router::from_specs(
        Arc::new(local.clone()),
        &[format!("{routed}={}", server.url("tei"))],
        quick(RemoteConfig::default()),
        local.cache(),
    )
    .expect("router");
    assert!(router.is_remote(routed) && !router.is_remote(MODEL));

    let remote = router
        .embed(routed, texts(2), &Value::Null)
        .await
        .expect("remote");
    assert_eq!(
        server.seen().len(),
        1,
        "the routed model went to the server"
    );
    let want = local
        .embed(MODEL, texts(2), &Value::Null)
        .await
        .expect("local");
    assert_same(&remote, &want);
    assert_eq!(
        router.dimension(routed, &Value::Null).await.expect("dim"),
        384
    );

    let here = router
        .embed(MODEL, texts(2), &Value::Null)
        .await
        .expect("local");
    assert_same(&here, &want);
    assert_eq!(
        router.dimension(MODEL, &Value::Null).await.expect("dim"),
        384
    );
    let err = router
        .embed("acme/unrouted", texts(1), &Value::Null)
        .await
        .expect_err("not local either");
    assert_eq!(err.sqlstate(), "58000", "{err}");
    assert_eq!(
        server.seen().len(),
        2,
        "only the routed model and its probe reached it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_vectors_are_cached_like_local_ones() {
    let server = Server::start(engine()).await;
    let caching = Engine::new(EngineConfig {
        allow_download: false,
        cache_bytes: 16 << 20,
        intra_threads: Some(1),
        ..EngineConfig::default()
    })
    .expect("engine");
    let routed = "acme/remote-minilm";
    let router = Router::from_specs(
        Arc::new(caching.clone()),
        &[format!("{routed}={}", server.url("tei"))],
        quick(RemoteConfig::default()),
        caching.cache(),
    )
    .expect("router");
    let first = router
        .embed(routed, texts(3), &Value::Null)
        .await
        .expect("remote");
    assert_eq!(server.seen().len(), 1);
    let hits = caching.metrics().cache_hits;
    // Kwargs that do not change the vector (placement, batching) share the entries.
    let again = router
        .embed(routed, texts(3), &json!({"device": "cpu", "batch_size": 8}))
        .await
        .expect("cached");
    assert_eq!(again, first, "served from the cache, bit for bit");
    assert_eq!(server.seen().len(), 1, "the second call sent nothing");
    assert_eq!(caching.metrics().cache_hits - hits, 3);

    // One new text among cached ones: only it is sent.
    let mut mixed = texts(3);
    mixed.insert(1, "A text the server has not seen.".to_owned());
    let got = router
        .embed(routed, mixed.clone(), &Value::Null)
        .await
        .expect("mixed");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].inputs, vec![mixed[1].clone()]);
    assert_eq!(
        (&got[0], &got[2], &got[3]),
        (&first[0], &first[1], &first[2])
    );

    // Kwargs that change the vector are another key.
    let short = router
        .embed(routed, texts(3), &json!({"truncate_dim": 64}))
        .await
        .expect("truncated");
    assert_eq!(server.seen().len(), 3);
    assert!(short.iter().all(|v| v.len() == 64));
    let prompted = router
        .embed(routed, texts(1), &json!({"prompt": "query: "}))
        .await
        .expect("prompted");
    assert_eq!(server.seen().len(), 4);
    assert_ne!(prompted[0], first[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_metrics_count_requests_retries_errors_and_latency() {
    let server = Server::start(engine()).await;
    let remote = RemoteEmbedder::new(
        &server.url("tei"),
        quick(RemoteConfig {
            retries: 1,
            ..RemoteConfig::default()
        }),
    )
    .expect("remote");
    assert!(remote.metrics().is_empty());
    server.state.fail_next.store(1, Ordering::SeqCst);
    remote
        .embed(MODEL, texts(2), &Value::Null)
        .await
        .expect("served on the retry");
    let m = remote.metrics();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].model.as_str(), m[0].backend.as_str()),
        (MODEL, remote.endpoint().url().as_str())
    );
    assert_eq!((m[0].requests, m[0].retries, m[0].errors), (2, 1, 0));
    assert_eq!(m[0].latency.count(), 2);
    assert!(m[0].latency.sum_seconds > 0.0);

    server.state.fail_next.store(100, Ordering::SeqCst);
    remote
        .embed(MODEL, texts(1), &Value::Null)
        .await
        .expect_err("503 after the retry too");
    let m = remote.metrics();
    assert_eq!((m[0].requests, m[0].retries, m[0].errors), (4, 2, 1));
    assert_eq!(m[0].latency.count(), 4);
    assert_eq!(server.seen().len(), 4);
}
