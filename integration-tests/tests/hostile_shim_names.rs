//! The shim against roles that plant objects: PostgresML's vector helpers resolve nothing
//! through the caller's search_path (a role's own `unnest(real[])` would otherwise win over
//! `pg_catalog.unnest(anyarray)` as the closer match), and a client's session never installs
//! the shim itself (its objects would then belong to that client's role).

use pgml_integration_tests::{connect, stack, Proxy, DEFAULT_MODEL};

#[tokio::test]
async fn vector_helpers_ignore_functions_planted_in_the_callers_search_path() {
    let admin = connect(&stack().direct_url()).await.expect("direct");
    admin
        .batch_execute(
            "DROP SCHEMA IF EXISTS planted CASCADE; CREATE SCHEMA planted;
             CREATE FUNCTION planted.unnest(real[]) RETURNS SETOF real LANGUAGE sql
                 AS $$ SELECT 1000::real $$;
             CREATE FUNCTION planted.array_agg(real) RETURNS real[] LANGUAGE sql
                 AS $$ SELECT ARRAY[-1]::real[] $$;
             GRANT USAGE ON SCHEMA planted TO PUBLIC",
        )
        .await
        .expect("planting functions");
    let client = connect(&stack().url()).await.expect("through the proxy");
    client
        .batch_execute("SET search_path = planted, public")
        .await
        .expect("search_path");
    let row = client
        .query_one(
            "SELECT pgml.norm_l2(ARRAY[3, 4]::real[]), pgml.dot_product(ARRAY[1, 2]::real[], ARRAY[3, 4]::real[]),
                    pgml.add(ARRAY[1, 2]::real[], ARRAY[3, 4]::real[]),
                    pgml.cosine_similarity(ARRAY[1, 0]::float8[], ARRAY[1, 0]::float8[])",
            &[],
        )
        .await
        .expect("vector helpers");
    assert_eq!(row.get::<_, f32>(0), 5.0, "norm_l2 used the planted unnest");
    assert_eq!(
        row.get::<_, f32>(1),
        11.0,
        "dot_product used the planted unnest"
    );
    assert_eq!(row.get::<_, Vec<f32>>(2), vec![4.0, 6.0]);
    assert_eq!(row.get::<_, f64>(3), 1.0);
    admin
        .batch_execute("DROP SCHEMA planted CASCADE")
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_client_session_never_installs_the_shim() {
    let admin = connect(&stack().direct_url()).await.expect("direct");
    for sql in [
        "DROP DATABASE IF EXISTS no_shim",
        "CREATE DATABASE no_shim TEMPLATE template0",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    let pg_port = stack().pg_port.expect("embedded Postgres");
    // No --service-url: nothing but the client's own session could install the shim.
    let proxy = Proxy::spawn(
        "no-service-connection",
        &["--upstream", &format!("postgres://127.0.0.1:{pg_port}")],
    );
    let url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/no_shim",
        proxy.port
    );
    let client = connect(&url).await.expect("through the proxy");
    client
        .batch_execute(
            "CREATE EXTENSION vector;
             CREATE TABLE docs (body text); INSERT INTO docs VALUES ('a'), ('b')",
        )
        .await
        .expect("a table");
    // A constant call needs no shim.
    let row = client
        .query_one(
            &format!("SELECT vector_dims(pgml.embed('{DEFAULT_MODEL}', 'hi')::vector)"),
            &[],
        )
        .await
        .expect("a constant call without the shim");
    assert_eq!(row.get::<_, i32>(0), 384);
    // A call over a column needs it, and the session does not install it: not in the
    // extended protocol, not in the simple one.
    let select = format!("SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM docs");
    let failed = client.query(&select, &[]).await;
    assert!(failed.is_err(), "served without a shim: {failed:?}");
    let failed = client.simple_query(&select).await;
    assert!(failed.is_err(), "served without a shim: {failed:?}");
    let schemas: i64 = connect(&format!(
        "postgres://postgres:postgres@127.0.0.1:{pg_port}/no_shim"
    ))
    .await
    .expect("direct")
    .query_one(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('pgml', 'pgml_proxy')",
        &[],
    )
    .await
    .expect("schemas")
    .get(0);
    assert_eq!(schemas, 0, "a client's session installed the shim");
    let log = proxy.log();
    assert!(log.contains("pgml-proxy install --upstream"), "{log}");
    drop(client);
    drop(proxy);
    admin
        .batch_execute("DROP DATABASE no_shim WITH (FORCE)")
        .await
        .expect("cleanup");
}
