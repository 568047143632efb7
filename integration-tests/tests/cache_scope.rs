//! `--cache-scope role`: a cached embedding is reused only by sessions of the role that
//! computed it, so that a call's latency (a hit answers in microseconds, a miss runs the model)
//! tells one role nothing about the texts another embedded. The default, `shared`, reuses it
//! for everyone. Hits and misses are read from the proxy's own metrics.

use pgml_integration_tests::{connect, free_port, spawn_embedded, Proxy, DEFAULT_MODEL};

const HITS: &str = "pgml_proxy_engine_cache_hits_total";
const MISSES: &str = "pgml_proxy_engine_cache_misses_total";

/// A proxy with `--cache-scope scope` and its own embedded Postgres (so that it has a service
/// connection, and upcalls are served).
fn proxy_with_scope(label: &str, scope: &str) -> Proxy {
    let metrics_port = free_port();
    let mut proxy = spawn_embedded(
        label,
        &format!("pgdata-{label}"),
        &[
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--cache-scope",
            scope,
        ],
    );
    proxy.metrics_port = Some(metrics_port);
    proxy
}

/// Creates roles `{prefix}_alice` and `{prefix}_bob` (each test its own: they run at once).
async fn create_roles(proxy: &Proxy, prefix: &str) -> (String, String) {
    let admin = connect(&proxy.direct_url()).await.expect("direct");
    let roles = (format!("{prefix}_alice"), format!("{prefix}_bob"));
    for role in [&roles.0, &roles.1] {
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; SET password_encryption = 'scram-sha-256';
                 CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"
            ))
            .await
            .expect("a role");
    }
    roles
}

/// Embeds `text` through `proxy` as `role`, in a constant call or (`upcall`) from a DO block;
/// returns the (hits, misses) the call added.
async fn embed_as(proxy: &Proxy, role: &str, text: &str) -> (f64, f64) {
    embed_with(proxy, role, text, false).await
}

async fn embed_with(proxy: &Proxy, role: &str, text: &str, upcall: bool) -> (f64, f64) {
    let before = (proxy.metric(HITS), proxy.metric(MISSES));
    let client = connect(&format!(
        "postgres://{role}:pw-{role}@127.0.0.1:{}/postgres",
        proxy.port
    ))
    .await
    .expect("connect through the proxy");
    if upcall {
        client
            .batch_execute(&format!(
                "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', '{text}'); END $$"
            ))
            .await
            .expect("pgml.embed in a DO block");
    } else {
        let row = client
            .query_one(
                &format!("SELECT pgml.embed('{DEFAULT_MODEL}', '{text}')"),
                &[],
            )
            .await
            .expect("pgml.embed");
        assert_eq!(row.get::<_, Vec<f32>>(0).len(), 384);
    }
    (
        proxy.metric(HITS) - before.0,
        proxy.metric(MISSES) - before.1,
    )
}

#[tokio::test]
async fn with_a_role_scope_another_roles_cached_text_is_a_miss() {
    let proxy = proxy_with_scope("cache-role", "role");
    let (alice, bob) = create_roles(&proxy, "scoped").await;
    let text = "a secret only alice has embedded";
    assert_eq!(embed_as(&proxy, &alice, text).await, (0.0, 1.0));
    assert_eq!(embed_as(&proxy, &alice, text).await, (1.0, 0.0));
    // Bob's call runs the model: nothing tells him alice embedded it.
    assert_eq!(embed_as(&proxy, &bob, text).await, (0.0, 1.0));
    assert_eq!(embed_as(&proxy, &bob, text).await, (1.0, 0.0));
    // Upcalls too: from a DO block, alice's vector is hers.
    let text = "embedded by alice from a DO block";
    assert_eq!(embed_with(&proxy, &alice, text, true).await, (0.0, 1.0));
    assert_eq!(embed_with(&proxy, &bob, text, true).await, (0.0, 1.0));
    assert_eq!(embed_with(&proxy, &bob, text, false).await, (1.0, 0.0));
}

#[tokio::test]
async fn the_default_shared_scope_reuses_every_roles_vectors() {
    let proxy = proxy_with_scope("cache-shared", "shared");
    let (alice, bob) = create_roles(&proxy, "shared").await;
    let text = "a text every role may reuse";
    assert_eq!(embed_as(&proxy, &alice, text).await, (0.0, 1.0));
    assert_eq!(embed_as(&proxy, &bob, text).await, (1.0, 0.0));
    let text = "embedded by alice from a DO block";
    assert_eq!(embed_with(&proxy, &alice, text, true).await, (0.0, 1.0));
    assert_eq!(embed_with(&proxy, &bob, text, true).await, (1.0, 0.0));
}
