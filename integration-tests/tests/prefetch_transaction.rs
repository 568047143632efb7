//! A prefetched statement sent outside a transaction block runs in one transaction with its
//! prefetch query, as autocommit would run the statement alone: what its FROM/WHERE did is
//! rolled back with it when it fails, a COMMIT's error (a deferred constraint) is its error,
//! the client is idle afterwards, a pipelined next statement does not join it, and a client
//! that hangs up right after sending it still gets it committed. A statement whose prefetch
//! would run a VOLATILE function is not prefetched: every function runs once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use pgml_integration_tests::{connect, stack, DEFAULT_MODEL};
use tokio_postgres::SimpleQueryMessage;

async fn setup(name: &str) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let direct = connect(&stack().direct_url()).await.unwrap();
    direct
        .batch_execute(&format!(
            "DROP VIEW IF EXISTS {name}_view;
             DROP TABLE IF EXISTS {name}_docs, {name}_audit, {name}_child, {name}_parent, {name}_target CASCADE;
             CREATE TABLE {name}_docs (id int PRIMARY KEY, body text, emb real[]);
             INSERT INTO {name}_docs SELECT i, 'document ' || i FROM generate_series(1, 5) i;
             CREATE TABLE {name}_audit (id int);
             CREATE OR REPLACE FUNCTION {name}_audited(i int) RETURNS boolean LANGUAGE sql VOLATILE AS
               $$ INSERT INTO {name}_audit VALUES (i) RETURNING true $$;"
        ))
        .await
        .unwrap();
    let through = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    (direct, through)
}

fn count(messages: &[SimpleQueryMessage]) -> i64 {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn a_failed_prefetched_statement_leaves_nothing_committed() {
    let (direct, through) = setup("failed").await;
    // A view hides a VOLATILE function from the statement's text (the proxy finds it and lets
    // the upcall serve the statement). The statement fails at id 3.
    direct
        .batch_execute(
            "CREATE OR REPLACE VIEW failed_view AS SELECT * FROM failed_docs WHERE failed_audited(id);
             CREATE TABLE IF NOT EXISTS failed_target (emb real[], n int);",
        )
        .await
        .unwrap();
    let err = through
        .simple_query(&format!(
            "INSERT INTO failed_target SELECT pgml.embed('{DEFAULT_MODEL}', body), 1 / (id - 3) FROM failed_view"
        ))
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"), "{err:?}");
    let audit = direct
        .simple_query("SELECT count(*) FROM failed_audit")
        .await
        .unwrap();
    assert_eq!(
        count(&audit),
        0,
        "nothing of the failed statement committed"
    );

    // The session is idle, not inside a transaction the proxy left open: a statement that
    // cannot run in a transaction block runs.
    through
        .simple_query("VACUUM failed_audit")
        .await
        .expect("VACUUM runs outside a transaction block");

    // The same statement without the failure commits, and a direct session sees it at once.
    through
        .simple_query(&format!(
            "UPDATE failed_docs SET emb = pgml.embed('{DEFAULT_MODEL}', body) WHERE id < 3"
        ))
        .await
        .unwrap();
    let filled = direct
        .simple_query("SELECT count(*) FROM failed_docs WHERE emb IS NOT NULL")
        .await
        .unwrap();
    assert_eq!(count(&filled), 2);
}

#[tokio::test]
async fn a_deferred_constraint_failing_at_commit_fails_the_statement() {
    let (direct, through) = setup("deferred").await;
    direct
        .batch_execute(
            "CREATE TABLE deferred_parent (id int PRIMARY KEY);
             CREATE TABLE deferred_child (pid int REFERENCES deferred_parent DEFERRABLE INITIALLY DEFERRED, emb real[]);",
        )
        .await
        .unwrap();
    for extended in [false, true] {
        let sql = format!(
            "INSERT INTO deferred_child SELECT 99, pgml.embed('{DEFAULT_MODEL}', body) FROM deferred_docs"
        );
        let err = if extended {
            through.execute(&sql, &[]).await.expect_err("FK at COMMIT")
        } else {
            through.simple_query(&sql).await.expect_err("FK at COMMIT")
        };
        assert_eq!(err.code().map(|c| c.code()), Some("23503"), "{err:?}");
        let rows = direct
            .simple_query("SELECT count(*) FROM deferred_child")
            .await
            .unwrap();
        assert_eq!(count(&rows), 0, "extended: {extended}");
    }
    // The session goes on.
    let rows = through.simple_query("SELECT 1").await.unwrap();
    assert_eq!(count(&rows), 1);
}

#[tokio::test]
async fn a_pipelined_statement_does_not_join_the_prefetched_one() {
    let (direct, through) = setup("pipelined").await;
    // tokio-postgres writes both before reading either answer.
    let update =
        format!("UPDATE pipelined_docs SET emb = pgml.embed('{DEFAULT_MODEL}', body) WHERE id = 1");
    let first = through.simple_query(&update);
    let second = through.simple_query("INSERT INTO pipelined_audit VALUES (1/0)");
    let third = through.simple_query("INSERT INTO pipelined_audit VALUES (7)");
    let (first, second, third) = tokio::join!(first, second, third);
    first.expect("the prefetched UPDATE");
    assert_eq!(
        second
            .expect_err("its own failure")
            .code()
            .map(|c| c.code()),
        Some("22012")
    );
    third.expect("an independent statement");
    // The second's failure undid nothing of the others: each committed on its own.
    let audit = direct
        .simple_query(
            "SELECT (SELECT string_agg(id::text, ',') FROM pipelined_audit) || ' ' || \
                    (SELECT count(*) FROM pipelined_docs WHERE emb IS NOT NULL)",
        )
        .await
        .unwrap();
    let SimpleQueryMessage::Row(row) = &audit[1] else {
        panic!("{audit:?}")
    };
    assert_eq!(row.get(0), Some("7 1"));
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_statement_still_gets_it_committed() {
    let (direct, _through) = setup("hangup").await;
    direct
        .batch_execute(
            "CREATE OR REPLACE FUNCTION hangup_slow() RETURNS boolean LANGUAGE sql VOLATILE AS
               $$ SELECT true FROM pg_sleep(0.5) $$",
        )
        .await
        .unwrap();
    // Five rows at 0.5 s each in the prefetch query, then again in the UPDATE: psql is killed
    // while the UPDATE runs, after the proxy sent it inside its transaction.
    let psql = std::path::Path::new(&pgml_integration_tests::required_env("PGML_PROXY_PG_DIR"))
        .join("bin/psql");
    let mut child = std::process::Command::new(psql)
        .env("PGPASSWORD", "postgres")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &stack().port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            &format!(
                "UPDATE hangup_docs SET emb = pgml.embed('{DEFAULT_MODEL}', body) WHERE hangup_slow()"
            ),
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let filled = direct
            .simple_query("SELECT count(*) FROM hangup_docs WHERE emb IS NOT NULL")
            .await
            .unwrap();
        if count(&filled) == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the UPDATE of a client that hung up was not committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn volatile_functions_run_exactly_as_often_as_sent_directly() {
    let (direct, through) = setup("volatile").await;
    direct
        .batch_execute(
            "CREATE OR REPLACE FUNCTION volatile_logged(t text) RETURNS text LANGUAGE sql VOLATILE AS
               $$ INSERT INTO volatile_audit VALUES (length(t)) RETURNING t $$;
             CREATE OR REPLACE VIEW volatile_inner AS SELECT * FROM volatile_docs WHERE volatile_audited(id);
             CREATE OR REPLACE VIEW \"Volatile Outer\" AS SELECT * FROM volatile_inner;",
        )
        .await
        .unwrap();
    let expected = pgml_integration_tests::engine_embed(DEFAULT_MODEL, "{}", &["document 1"]);
    // In the call's argument, in WHERE, hidden in a view (in a view): simple and extended
    // protocol.
    let statements = [
        format!("SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM public.\"Volatile Outer\" WHERE id <= 2"),
        format!("SELECT pgml.embed('{DEFAULT_MODEL}', volatile_logged(body)) FROM volatile_docs WHERE id <= 2"),
        format!("UPDATE volatile_docs SET emb = pgml.embed('{DEFAULT_MODEL}', body) WHERE id <= 2 AND volatile_audited(id)"),
    ];
    for extended in [false, true] {
        for sql in &statements {
            direct
                .batch_execute("TRUNCATE volatile_audit")
                .await
                .unwrap();
            if extended {
                through.execute(sql.as_str(), &[]).await.unwrap();
            } else {
                through.simple_query(sql).await.unwrap();
            }
            let audit = direct
                .simple_query("SELECT count(*) FROM volatile_audit")
                .await
                .unwrap();
            assert_eq!(count(&audit), 2, "extended {extended}: {sql}");
        }
    }
    let rows = direct
        .query("SELECT emb FROM volatile_docs WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, Vec<f32>>(0), expected[0]);
    // A STABLE or IMMUTABLE function in the same places is still prefetched (no upcall).
    let upcalls = stack().metric("pgml_proxy_upcalls_total");
    through
        .simple_query(&format!(
            "SELECT pgml.embed('{DEFAULT_MODEL}', upper(body)) FROM volatile_docs WHERE length(body) > 0"
        ))
        .await
        .unwrap();
    assert_eq!(stack().metric("pgml_proxy_upcalls_total"), upcalls);
}
