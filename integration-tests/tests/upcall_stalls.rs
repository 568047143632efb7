//! Upcalls that used to wait for the full upcall timeout: one raised by the proxy's own
//! prefetch query (its WHERE calls a function that calls pgml.embed) is answered while that
//! query runs. The time bounds tell "at once" from the 60 s upcall timeout.

use std::time::{Duration, Instant};

use pgml_integration_tests::{
    connect, engine_embed, max_abs_diff, parse_real_array, stack, DEFAULT_MODEL,
};

#[tokio::test]
async fn an_upcall_inside_a_prefetch_query_is_answered_at_once() {
    let client = connect(&stack().url()).await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE TABLE stall_docs (body text);
             INSERT INTO stall_docs VALUES ('first stalled text'), ('second stalled text');
             CREATE FUNCTION stall_check(t text) RETURNS boolean LANGUAGE plpgsql AS
               $$ BEGIN RETURN pgml.embed('{DEFAULT_MODEL}', t) IS NOT NULL; END $$;"
        ))
        .await
        .expect("schema");
    let started = Instant::now();
    // The simple protocol: the proxy runs the prefetch query on the session before the statement.
    let messages = client
        .simple_query(&format!(
            "SELECT pgml.embed('{DEFAULT_MODEL}', body)::text FROM stall_docs
              WHERE stall_check(body) ORDER BY body"
        ))
        .await
        .expect("the statement");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "took {elapsed:?}: the upcall waited for its timeout"
    );
    let want = engine_embed(
        DEFAULT_MODEL,
        "{}",
        &["first stalled text", "second stalled text"],
    );
    let rows: Vec<Vec<f32>> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(parse_real_array),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    for (got, want) in rows.iter().zip(&want) {
        assert!(max_abs_diff(got, want) <= 1e-6);
    }
}

#[tokio::test]
async fn an_upcall_the_proxy_will_not_answer_fails_at_once_with_the_reason() {
    let port = stack().pg_port.expect("embedded Postgres");
    let admin = connect(&stack().direct_url()).await.expect("direct");
    admin
        .batch_execute("CREATE DATABASE stall_refused")
        .await
        .expect("a database from template1, which has the shim");
    let db = connect(&format!(
        "postgres://postgres:postgres@127.0.0.1:{port}/stall_refused"
    ))
    .await
    .expect("direct to the new database");
    // A trigger on the answer table: the proxy must not write there any more.
    db.batch_execute(
        "CREATE FUNCTION public.watch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER watch BEFORE INSERT ON pgml_proxy.upcall_answer
             FOR EACH ROW EXECUTE FUNCTION public.watch();",
    )
    .await
    .expect("the trigger");
    let client = connect(&format!(
        "postgres://postgres:postgres@127.0.0.1:{}/stall_refused",
        stack().port
    ))
    .await
    .expect("through the proxy");
    let started = Instant::now();
    let err = client
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'never answered'); END $$"
        ))
        .await
        .expect_err("no answer can be written");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "took {elapsed:?}: the statement waited for the upcall timeout"
    );
    let db_error = err.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "42501", "{db_error:?}");
    assert!(
        db_error.message().contains("upcall_answer"),
        "the reason names the object: {}",
        db_error.message()
    );
    // The session goes on.
    client.batch_execute("SELECT 1").await.expect("usable");
}

#[tokio::test]
async fn an_upcall_with_an_empty_answer_returns_no_rows_at_once() {
    let client = connect(&stack().url()).await.expect("connect");
    let started = Instant::now();
    // Inside a DO block pgml.chunk is an upcall; an empty text has no chunks, so the answer
    // has no rows (it used to wait for rows until the upcall timeout, then fail with 57014).
    client
        .batch_execute(
            "DO $$ DECLARE n bigint; BEGIN
               SELECT count(*) INTO n FROM pgml.chunk('recursive_character', '', '{}');
               IF n <> 0 THEN RAISE EXCEPTION 'an empty text gave % chunks', n; END IF;
               SELECT count(*) INTO n FROM pgml.chunk('character', 'some words', '{}');
               IF n <> 1 THEN RAISE EXCEPTION 'a short text gave % chunks', n; END IF;
             END $$",
        )
        .await
        .expect("pgml.chunk of an empty text in a DO block");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}: the empty answer waited for the upcall timeout"
    );
}
