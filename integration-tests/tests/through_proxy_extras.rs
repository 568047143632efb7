//! The rest of PostgresML's surface through the proxy: `pgml.load_dataset` (the bundled
//! reviews_sample: limit, schema, values, replacement, errors that leave nothing behind,
//! transactions) and the Prometheus endpoint (counters move as statements run).

use pgml_integration_tests::{connect, stack, DEFAULT_MODEL};
use tokio_postgres::{Client, SimpleQueryMessage};

async fn client() -> Client {
    connect(&stack().url()).await.expect("connect")
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .get(0)
}

async fn table_exists(client: &Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

#[tokio::test]
async fn load_dataset_loads_replaces_and_rolls_back() {
    let client = client().await;
    let answer = client
        .simple_query("SELECT * FROM pgml.load_dataset('reviews_sample', limit => 120)")
        .await
        .expect("load_dataset");
    let answer = rows(&answer);
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0][1].as_deref(), Some("120"), "{answer:?}");
    let table = answer[0][0].clone().expect("a table name");
    assert!(table.ends_with("reviews_sample"), "{table}");
    assert_eq!(count(&client, "pgml.reviews_sample").await, 120);

    // The amazon_us_reviews columns and types.
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
              WHERE table_schema = 'pgml' AND table_name = 'reviews_sample' ORDER BY ordinal_position",
            &[],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, ty) in [
        ("review_body", "text"),
        ("star_rating", "integer"),
        ("product_title", "text"),
        ("verified_purchase", "bigint"),
    ] {
        assert!(
            columns.contains(&(name.to_owned(), ty.to_owned())),
            "{name} {ty} in {columns:?}"
        );
    }
    assert_eq!(columns.len(), 15, "{columns:?}");
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE length(review_body) > 20),
                    min(star_rating), max(star_rating)
               FROM pgml.reviews_sample",
            &[],
        )
        .await
        .expect("values");
    assert_eq!(row.get::<_, i64>(0), 120, "every review has a body");
    assert!(row.get::<_, i32>(1) >= 1 && row.get::<_, i32>(2) <= 5);

    // The article's next step works on the loaded table.
    let embedded = client
        .simple_query(&format!(
            "SELECT review_body, pgml.embed('{DEFAULT_MODEL}', 'passage: ' || review_body)
               FROM pgml.reviews_sample LIMIT 10"
        ))
        .await
        .expect("embed the loaded reviews");
    assert_eq!(rows(&embedded).len(), 10);

    // A second call replaces the table.
    client
        .simple_query("SELECT * FROM pgml.load_dataset('reviews_sample', limit => 30)")
        .await
        .expect("reload");
    assert_eq!(count(&client, "pgml.reviews_sample").await, 30);

    // Inside a transaction: ROLLBACK undoes the load.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .simple_query("SELECT * FROM pgml.load_dataset('reviews_sample', limit => 7)")
        .await
        .expect("load in a transaction");
    assert_eq!(count(&client, "pgml.reviews_sample").await, 7);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&client, "pgml.reviews_sample").await, 30);
}

#[tokio::test]
async fn load_dataset_errors_leave_nothing_behind() {
    let client = client().await;
    let err = client
        .simple_query("SELECT * FROM pgml.load_dataset('no_such_dataset_anywhere')")
        .await
        .expect_err("unknown dataset");
    let db = err.as_db_error().expect("a server error");
    assert!(
        db.message().contains("no_such_dataset_anywhere"),
        "{}",
        db.message()
    );
    assert!(!table_exists(&client, "pgml.no_such_dataset_anywhere").await);

    let err = client
        .simple_query("SELECT * FROM pgml.load_dataset('reviews_sample', kwargs => '{oops')")
        .await
        .expect_err("bad kwargs");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("22P02"),
        "{err}"
    );

    // In a transaction the error fails it, like any statement; ROLLBACK recovers.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .simple_query("SELECT * FROM pgml.load_dataset('no_such_dataset_anywhere')")
        .await
        .expect_err("unknown dataset in a transaction");
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("failed transaction");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("25P02"));
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(!table_exists(&client, "pgml.no_such_dataset_anywhere").await);
    let row = client.query_one("SELECT 1", &[]).await.expect("usable");
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test]
async fn metrics_count_statements_by_path_and_report_ready() {
    let proxy = stack();
    let client = client().await;
    client
        .batch_execute(
            "CREATE TABLE metrics_docs (body text); INSERT INTO metrics_docs VALUES ('m1'), ('m2')",
        )
        .await
        .expect("table");
    let series = |path: &str| format!("pgml_proxy_statements_total{{path=\"{path}\"}}");
    let before: Vec<f64> = ["constant", "prefetch", "upcall"]
        .iter()
        .map(|p| proxy.metric(&series(p)))
        .collect();
    let upcalls_before = proxy.metric("pgml_proxy_upcalls_total");
    let embeddings_before = proxy.metric("pgml_proxy_statement_embeddings_total");

    client
        .simple_query(&format!(
            "SELECT pgml.embed('{DEFAULT_MODEL}', 'metrics constant')"
        ))
        .await
        .expect("constant");
    client
        .simple_query(&format!(
            "SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM metrics_docs"
        ))
        .await
        .expect("prefetch");
    client
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'metrics upcall'); END $$"
        ))
        .await
        .expect("upcall");

    for (i, path) in ["constant", "prefetch", "upcall"].iter().enumerate() {
        let after = proxy.metric(&series(path));
        assert!(after >= before[i] + 1.0, "{path}: {} -> {after}", before[i]);
    }
    assert!(proxy.metric("pgml_proxy_upcalls_total") >= upcalls_before + 1.0);
    assert!(proxy.metric("pgml_proxy_statement_embeddings_total") >= embeddings_before + 3.0);
    assert!(proxy.metric("pgml_proxy_engine_requests_total") >= 1.0);

    // This session is open: the gauge counts it (and did not wrap below zero).
    let active = proxy.metric("pgml_proxy_connections_active");
    assert!(
        (1.0..1000.0).contains(&active),
        "connections_active = {active}"
    );
    assert!(proxy.metric("pgml_proxy_connections_total") >= 1.0);
    assert_eq!(proxy.metric("pgml_proxy_ready"), 1.0);
    assert!(proxy.http_get("/readyz").len() < 100);
}
