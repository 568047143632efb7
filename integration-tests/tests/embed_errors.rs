//! Bad and extreme input to pgml.embed through the proxy: each gives the right result or a
//! clear error with Postgres' SQLSTATE, the connection keeps working, and inside an explicit
//! transaction an embedding error fails the transaction exactly as Postgres would.

use pgml_integration_tests::{connect, engine_embed, max_abs_diff, stack, Jsonb, DEFAULT_MODEL};
use tokio_postgres::{Client, SimpleQueryMessage};

async fn client() -> Client {
    connect(&stack().url()).await.expect("connect")
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

async fn assert_usable(client: &Client) {
    let rows = client
        .simple_query("SELECT 'still usable'")
        .await
        .expect("the connection keeps working");
    assert!(rows
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("still usable"))));
}

/// Runs `sql` in the simple protocol and returns the error's (SQLSTATE, message).
async fn simple_error(client: &Client, sql: &str) -> (String, String) {
    let err = client
        .simple_query(sql)
        .await
        .expect_err(&format!("{sql:.120} should fail"));
    let message = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    (sqlstate(&err), message)
}

#[tokio::test]
async fn bad_arguments_give_clear_errors_in_both_protocols() {
    let client = client().await;
    let m = DEFAULT_MODEL;
    let cases = [
        (
            "SELECT pgml.embed('no-such-org/no-such-model', 'x')".to_owned(),
            "58000",
            "no-such-org/no-such-model",
        ),
        (
            format!("SELECT pgml.embed('{m}', 'x', '{{not json')"),
            "22P02",
            "json",
        ),
        (
            format!("SELECT pgml.embed('{m}', 'x', '{{\"bogus_key\": 1}}')"),
            "22023",
            "bogus_key",
        ),
        (
            format!("SELECT pgml.embed('{m}', 'x', '{{\"device\": \"tpu\"}}')"),
            "22023",
            "tpu",
        ),
    ];
    for (sql, code, needle) in &cases {
        let (state, message) = simple_error(&client, sql).await;
        assert_eq!(&state, code, "{sql}: {message}");
        assert!(message.contains(needle), "{sql}: {message}");
        assert_usable(&client).await;
    }

    // The same through prepared statements (kwargs as a jsonb parameter).
    let stmt = client
        .prepare("SELECT pgml.embed($1, $2, $3::jsonb)")
        .await
        .expect("prepare");
    for (model, kwargs, code) in [
        ("no-such-org/no-such-model", "{}", "58000"),
        (m, "{not json", "22P02"),
        (m, r#"{"bogus_key": 1}"#, "22023"),
    ] {
        let err = client
            .query_one(&stmt, &[&model, &"x", &Jsonb(kwargs)])
            .await
            .expect_err("bad argument");
        assert_eq!(sqlstate(&err), code, "{model} {kwargs}: {err}");
        assert_usable(&client).await;
    }
    let v: Vec<f32> = client
        .query_one(&stmt, &[&m, &"fine", &Jsonb("{}")])
        .await
        .expect("the prepared statement still works")
        .get(0);
    assert_eq!(v.len(), 384);

    // A column argument (prefetch path) with an unknown model.
    client
        .batch_execute(
            "CREATE TABLE err_texts (body text); INSERT INTO err_texts VALUES ('a'), ('b')",
        )
        .await
        .expect("table");
    let (state, message) = simple_error(
        &client,
        "SELECT pgml.embed('no-such-org/no-such-model', body) FROM err_texts",
    )
    .await;
    assert_eq!(state, "58000", "{message}");
    assert_usable(&client).await;
}

#[tokio::test]
async fn null_empty_and_huge_texts() {
    let client = client().await;
    let m = DEFAULT_MODEL;
    // NULL text: NULL result (STRICT), in both protocols.
    let rows = client
        .simple_query(&format!("SELECT pgml.embed('{m}', NULL) IS NULL"))
        .await
        .expect("NULL");
    assert!(rows
        .iter()
        .any(|r| matches!(r, SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))));
    let v: Option<Vec<f32>> = client
        .query_one("SELECT pgml.embed($1, $2)", &[&m, &None::<String>])
        .await
        .expect("NULL param")
        .get(0);
    assert_eq!(v, None);

    // Empty string: a real vector, the engine's.
    let want = engine_embed(m, "{}", &[""]);
    let v: Vec<f32> = client
        .query_one(&format!("SELECT pgml.embed('{m}', '')"), &[])
        .await
        .expect("empty")
        .get(0);
    assert!(max_abs_diff(&v, &want[0]) <= 1e-6);

    // 1 MB of text: truncated to the model's max sequence length, so it equals the
    // embedding of its first few hundred words.
    let huge = "lorem ipsum dolor sit amet ".repeat(40_000);
    assert!(huge.len() > 1_000_000);
    let v: Vec<f32> = client
        .query_one("SELECT pgml.embed($1, $2)", &[&m, &huge])
        .await
        .expect("1 MB text, extended protocol")
        .get(0);
    let prefix = "lorem ipsum dolor sit amet ".repeat(200);
    let want = engine_embed(m, "{}", &[&prefix]);
    assert!(
        max_abs_diff(&v, &want[0]) <= 1e-6,
        "a 1 MB text is truncated like its first 1000 words"
    );
    let rows = client
        .simple_query(&format!(
            "SELECT array_length(pgml.embed('{m}', '{huge}'), 1)"
        ))
        .await
        .expect("1 MB text, simple protocol");
    assert!(rows
        .iter()
        .any(|r| matches!(r, SimpleQueryMessage::Row(r) if r.get(0) == Some("384"))));
    assert_usable(&client).await;
}

#[tokio::test]
async fn ten_thousand_element_batch() {
    let client = client().await;
    let m = DEFAULT_MODEL;
    let started = std::time::Instant::now();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT e::text), min(array_length(e, 1)) FROM pgml.embed('{m}',
                   (SELECT array_agg('batch element ' || i ORDER BY i) FROM generate_series(1, 10000) i)) e"
            ),
            &[],
        )
        .await
        .expect("10,000-element batch");
    assert_eq!(row.get::<_, i64>(0), 10_000);
    assert_eq!(
        row.get::<_, i64>(1),
        10_000,
        "every element has its own vector"
    );
    assert_eq!(row.get::<_, Option<i32>>(2), Some(384));
    eprintln!(
        "10,000-element batch (upcall path): {:?}",
        started.elapsed()
    );
    // Spot-check order against the engine.
    let rows = client
        .query(
            &format!(
                "SELECT n, e FROM pgml.embed('{m}',
                   (SELECT array_agg('batch element ' || i ORDER BY i) FROM generate_series(1, 10000) i))
                   WITH ORDINALITY AS t(e, n) WHERE n IN (1, 5000, 10000) ORDER BY n"
            ),
            &[],
        )
        .await
        .expect("batch again (cached)");
    let want = engine_embed(
        m,
        "{}",
        &[
            "batch element 1",
            "batch element 5000",
            "batch element 10000",
        ],
    );
    assert_eq!(rows.len(), 3);
    for (row, want) in rows.iter().zip(&want) {
        let v: Vec<f32> = row.get(1);
        assert!(
            max_abs_diff(&v, want) <= 1e-6,
            "element {}",
            row.get::<_, i64>(0)
        );
    }
    assert_usable(&client).await;
}

#[tokio::test]
async fn embedding_error_fails_the_transaction_and_rollback_recovers() {
    let client = client().await;
    let m = DEFAULT_MODEL;
    client
        .batch_execute("CREATE TABLE tx_docs (id int, emb real[])")
        .await
        .expect("table");
    for (label, failing) in [
        ("constant", "SELECT pgml.embed('no-such-org/no-such-model', 'x')".to_owned()),
        ("kwargs", format!("SELECT pgml.embed('{m}', 'x', '{{\"bogus_key\": 1}}')")),
        (
            "prefetch",
            "INSERT INTO tx_docs SELECT 2, pgml.embed('no-such-org/no-such-model', 'row ' || id) FROM tx_docs"
                .to_owned(),
        ),
        (
            "upcall",
            "DO $$ BEGIN PERFORM pgml.embed('no-such-org/no-such-model', 'in a DO block'); END $$"
                .to_owned(),
        ),
    ] {
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute(&format!(
                "INSERT INTO tx_docs VALUES (1, pgml.embed('{m}', 'kept until rollback'))"
            ))
            .await
            .expect("insert in the transaction");
        let (state, message) = simple_error(&client, &failing).await;
        assert!(
            state == "58000" || state == "22023",
            "{label}: {state} {message}"
        );
        let (state, _) = simple_error(&client, "SELECT 1").await;
        assert_eq!(state, "25P02", "{label}: the transaction is failed");
        // Also in the extended protocol.
        let err = client
            .query_one("SELECT pgml.embed($1, 'x')", &[&m])
            .await
            .expect_err("still failed");
        assert_eq!(sqlstate(&err), "25P02", "{label}");
        client.batch_execute("ROLLBACK").await.expect("rollback");
        let n: i64 = client
            .query_one("SELECT count(*) FROM tx_docs", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "{label}: the rollback removed the insert");
    }
    // COMMIT of a failed transaction rolls back, as in Postgres.
    client.batch_execute("BEGIN").await.expect("begin");
    let _ = simple_error(
        &client,
        "SELECT pgml.embed('no-such-org/no-such-model', 'x')",
    )
    .await;
    let messages = client.simple_query("COMMIT").await.expect("commit");
    assert!(messages
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    assert_usable(&client).await;
}

#[tokio::test]
async fn embedding_error_inside_a_pipeline_skips_to_sync() {
    let client = client().await;
    let m = DEFAULT_MODEL;
    // Three pipelined executes: the middle one fails; the first and third have their own
    // Syncs (tokio-postgres sends one per query) and succeed.
    let good = client
        .prepare("SELECT pgml.embed($1, $2)")
        .await
        .expect("prepare");
    let bad = "no-such-org/no-such-model";
    let (first, second, third) = ("first", "second", "third");
    let p1: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&m, &first];
    let p2: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&bad, &second];
    let p3: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&m, &third];
    let (a, b, c) = futures::join!(
        client.query_one(&good, &p1),
        client.query_one(&good, &p2),
        client.query_one(&good, &p3),
    );
    assert_eq!(a.expect("first").get::<_, Vec<f32>>(0).len(), 384);
    assert_eq!(sqlstate(&b.expect_err("second fails")), "58000");
    assert_eq!(c.expect("third").get::<_, Vec<f32>>(0).len(), 384);
}

#[tokio::test]
async fn upstream_error_in_a_prefetched_statement_is_postgres_own() {
    let client = client().await;
    let m = DEFAULT_MODEL;
    client
        .batch_execute(
            "CREATE TABLE prefetch_err (id int, body text);
             INSERT INTO prefetch_err VALUES (1, 'one'), (2, 'two')",
        )
        .await
        .expect("table");
    let failing =
        format!("SELECT pgml.embed('{m}', body) FROM prefetch_err WHERE 1 / (id - id) = 1");
    let (state, message) = simple_error(&client, &failing).await;
    assert_eq!(state, "22012", "{message}");
    assert_usable(&client).await;

    // Inside the client's own savepoint: ROLLBACK TO recovers, earlier work survives.
    client
        .batch_execute("BEGIN; INSERT INTO prefetch_err VALUES (3, 'three'); SAVEPOINT mine")
        .await
        .expect("begin");
    let (state, _) = simple_error(&client, &failing).await;
    assert_eq!(state, "22012");
    client
        .batch_execute("ROLLBACK TO SAVEPOINT mine")
        .await
        .expect("rollback to the client's savepoint");
    let rows = client
        .query(
            &format!("SELECT pgml.embed('{m}', body) FROM prefetch_err WHERE id = 3"),
            &[],
        )
        .await
        .expect("the transaction goes on");
    assert_eq!(rows.len(), 1);
    client.batch_execute("COMMIT").await.expect("commit");
    let n: i64 = client
        .query_one("SELECT count(*) FROM prefetch_err", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 3, "the insert before the savepoint was committed");
}
