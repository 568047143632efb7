//! pgml.embed evaluated inside Postgres (the upcall path): triggers, generated columns, the
//! batch form, DO blocks under REPEATABLE READ, and the shim refusing sessions that do not
//! come through the proxy.

use futures::future::join_all;
use pgml_integration_tests::{connect, engine_embed, max_abs_diff, stack, DEFAULT_MODEL};

async fn client() -> tokio_postgres::Client {
    connect(&stack().url()).await.expect("connect")
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

#[tokio::test]
async fn trigger_fills_embeddings_through_the_proxy_and_refuses_direct_sessions() {
    let client = client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE trig_docs (id serial PRIMARY KEY, body text, emb vector(384));
             CREATE FUNCTION trig_docs_embed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.emb := pgml.embed('{DEFAULT_MODEL}', NEW.body); RETURN NEW; END $$;
             CREATE TRIGGER trig_docs_embed BEFORE INSERT ON trig_docs
                FOR EACH ROW EXECUTE FUNCTION trig_docs_embed();"
        ))
        .await
        .expect("schema");
    let bodies = ["a trigger wrote this", "and this one", "and a third"];
    let want = engine_embed(DEFAULT_MODEL, "{}", &bodies);
    // Simple protocol, multi-row insert.
    client
        .batch_execute(&format!(
            "INSERT INTO trig_docs (body) VALUES ('{}'), ('{}')",
            bodies[0], bodies[1]
        ))
        .await
        .expect("insert through the proxy");
    // Extended protocol.
    client
        .execute("INSERT INTO trig_docs (body) VALUES ($1)", &[&bodies[2]])
        .await
        .expect("prepared insert through the proxy");
    let rows = client
        .query("SELECT emb FROM trig_docs ORDER BY id", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 3);
    for (row, want) in rows.iter().zip(&want) {
        let v: pgvector::Vector = row.get(0);
        let diff = max_abs_diff(v.as_slice(), want);
        assert!(diff <= 1e-6, "trigger vector differs by {diff}");
    }

    // Straight to Postgres: the shim says to connect through the proxy.
    let direct = connect(&stack().direct_url())
        .await
        .expect("direct connect");
    let err = direct
        .batch_execute("INSERT INTO trig_docs (body) VALUES ('direct')")
        .await
        .expect_err("the shim refuses a session that is not proxied");
    assert_eq!(sqlstate(&err), "55000");
    let message = err.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(message.contains("pgml-proxy"), "{message}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM trig_docs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 3, "the direct insert left nothing behind");
}

#[tokio::test]
async fn trigger_with_an_unknown_model_fails_the_insert_cleanly() {
    let client = client().await;
    client
        .batch_execute(
            "CREATE TABLE trig_bad (id serial, body text, emb real[]);
             CREATE FUNCTION trig_bad_embed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.emb := pgml.embed('no-such-org/no-such-model', NEW.body); RETURN NEW; END $$;
             CREATE TRIGGER trig_bad_embed BEFORE INSERT ON trig_bad
                FOR EACH ROW EXECUTE FUNCTION trig_bad_embed();",
        )
        .await
        .expect("schema");
    let err = client
        .batch_execute("INSERT INTO trig_bad (body) VALUES ('x')")
        .await
        .expect_err("unknown model");
    assert_eq!(sqlstate(&err), "58000");
    let message = err.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(message.contains("no-such-org/no-such-model"), "{message}");
    let row = client.query_one("SELECT 1", &[]).await.expect("usable");
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test]
async fn generated_column_is_filled_on_insert() {
    let client = client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE gen_docs (id serial PRIMARY KEY, body text,
               emb real[] GENERATED ALWAYS AS (pgml.embed('{DEFAULT_MODEL}', body)) STORED)"
        ))
        .await
        .expect("create");
    let bodies = ["generated column one", "generated column two"];
    let want = engine_embed(DEFAULT_MODEL, "{}", &bodies);
    client
        .batch_execute(&format!(
            "INSERT INTO gen_docs (body) VALUES ('{}'), ('{}'), (NULL)",
            bodies[0], bodies[1]
        ))
        .await
        .expect("insert");
    let rows = client
        .query("SELECT emb FROM gen_docs ORDER BY id", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 3);
    for (row, want) in rows.iter().zip(&want) {
        let v: Vec<f32> = row.get(0);
        let diff = max_abs_diff(&v, want);
        assert!(diff <= 1e-6, "generated column differs by {diff}");
    }
    assert_eq!(
        rows[2].get::<_, Option<Vec<f32>>>(0),
        None,
        "STRICT: NULL body"
    );
    // An UPDATE recomputes it.
    client
        .batch_execute(&format!(
            "UPDATE gen_docs SET body = '{}' WHERE id = 3",
            bodies[0]
        ))
        .await
        .expect("update");
    let v: Vec<f32> = client
        .query_one("SELECT emb FROM gen_docs WHERE id = 3", &[])
        .await
        .expect("select")
        .get(0);
    assert!(max_abs_diff(&v, &want[0]) <= 1e-6);
}

#[tokio::test]
async fn batch_form_returns_one_row_per_input_in_order() {
    let client = client().await;
    let inputs = ["a", "b", "c"];
    let want = engine_embed(DEFAULT_MODEL, "{}", &inputs);
    let rows = client
        .query(
            &format!("SELECT * FROM pgml.embed('{DEFAULT_MODEL}', ARRAY['a','b','c'])"),
            &[],
        )
        .await
        .expect("batch");
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        let v: Vec<f32> = row.get(0);
        assert!(
            max_abs_diff(&v, &want[i]) <= 1e-6,
            "row {i} is {}",
            inputs[i]
        );
        // Each equals the scalar form.
        let scalar: Vec<f32> = client
            .query_one("SELECT pgml.embed($1, $2)", &[&DEFAULT_MODEL, &inputs[i]])
            .await
            .expect("scalar")
            .get(0);
        assert!(max_abs_diff(&v, &scalar) <= 1e-6);
    }

    // Duplicates and NULLs keep their places; the array comes from a subquery (upcall path).
    let rows = client
        .query(
            &format!(
                "SELECT e FROM pgml.embed('{DEFAULT_MODEL}',
                   (SELECT ARRAY['c', NULL, 'a', 'c']::text[])) WITH ORDINALITY AS t(e, n) ORDER BY n"
            ),
            &[],
        )
        .await
        .expect("batch with NULL and duplicates");
    let got: Vec<Option<Vec<f32>>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got.len(), 4);
    assert!(got[1].is_none());
    for (slot, want) in [(0, &want[2]), (2, &want[0]), (3, &want[2])] {
        let v = got[slot].as_ref().expect("not NULL");
        assert!(max_abs_diff(v, want) <= 1e-6, "slot {slot}");
    }
}

#[tokio::test]
async fn repeatable_read_upcall_fails_with_a_clear_message_and_the_session_recovers() {
    let client = client().await;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin");
    let err = client
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'repeatable'); END $$"
        ))
        .await
        .expect_err("an upcall cannot see new answers under REPEATABLE READ");
    assert_eq!(sqlstate(&err), "0A000");
    let message = err.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(message.contains("REPEATABLE READ"), "{message}");
    let err = client
        .batch_execute("SELECT 1")
        .await
        .expect_err("the transaction is failed");
    assert_eq!(sqlstate(&err), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // A constant call needs no upcall and works under REPEATABLE READ.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin");
    let v: Vec<f32> = client
        .query_one("SELECT pgml.embed($1, 'repeatable')", &[&DEFAULT_MODEL])
        .await
        .expect("constant under repeatable read")
        .get(0);
    assert_eq!(v.len(), 384);
    client.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test]
async fn do_block_loop_with_commit_fills_every_row() {
    let client = client().await;
    client
        .batch_execute(
            "CREATE TABLE do_docs (id int PRIMARY KEY, body text, emb vector(384));
             INSERT INTO do_docs SELECT i, 'do block row ' || i FROM generate_series(1, 45) i;",
        )
        .await
        .expect("schema");
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
               FOR i IN 1..(SELECT max(id) FROM do_docs) BY 10 LOOP
                 UPDATE do_docs SET emb = pgml.embed('{DEFAULT_MODEL}', 'passage: ' || body)
                  WHERE id BETWEEN i AND i + 10 AND emb IS NULL;
                 COMMIT;
               END LOOP;
             END $$"
        ))
        .await
        .expect("DO block");
    let rows = client
        .query("SELECT body, emb FROM do_docs ORDER BY id", &[])
        .await
        .expect("select");
    let texts: Vec<String> = rows
        .iter()
        .map(|r| format!("passage: {}", r.get::<_, String>(0)))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = engine_embed(DEFAULT_MODEL, "{}", &refs);
    assert_eq!(rows.len(), 45);
    for (row, want) in rows.iter().zip(&want) {
        let v: Option<pgvector::Vector> = row.get(1);
        let v = v.expect("every row filled");
        assert!(max_abs_diff(v.as_slice(), want) <= 1e-6);
    }
}

#[tokio::test]
async fn prefetch_sees_the_transactions_own_uncommitted_rows() {
    let client = client().await;
    client
        .batch_execute("CREATE TABLE tx_visible (id int PRIMARY KEY, body text, emb real[])")
        .await
        .expect("table");
    // REPEATABLE READ: the upcall cannot serve here (it fails with 0A000), so success means
    // the prefetch ran inside this transaction and saw its uncommitted rows.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin");
    client
        .batch_execute(
            "INSERT INTO tx_visible (id, body) VALUES (1, 'uncommitted one'), (2, 'uncommitted two')",
        )
        .await
        .expect("insert");
    client
        .batch_execute(&format!(
            "UPDATE tx_visible SET emb = pgml.embed('{DEFAULT_MODEL}', body)"
        ))
        .await
        .expect("update in the transaction (prefetch path)");
    client.batch_execute("COMMIT").await.expect("commit");
    let want = engine_embed(DEFAULT_MODEL, "{}", &["uncommitted one", "uncommitted two"]);
    let rows = client
        .query("SELECT emb FROM tx_visible ORDER BY id", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 2);
    for (row, want) in rows.iter().zip(&want) {
        let v: Vec<f32> = row.get(0);
        assert!(max_abs_diff(&v, want) <= 1e-6);
    }
    // The proxy's savepoint and temp table are invisible: no pgml_proxy savepoint is left
    // and the client's transaction status was honoured (the COMMIT above committed).
    let n: i64 = client
        .query_one("SELECT count(*) FROM tx_visible WHERE emb IS NOT NULL", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn shim_is_installed_on_first_use_in_each_database_with_postgresml_signatures() {
    let admin = client().await;
    admin
        .batch_execute("CREATE DATABASE shim_second")
        .await
        .expect("create database");
    let url = format!(
        "{}/shim_second",
        stack()
            .url()
            .strip_suffix("/postgres")
            .expect("the harness URL names database postgres")
    );
    let client = connect(&url).await.expect("connect to the second database");
    client
        .batch_execute("CREATE TABLE docs (body text); INSERT INTO docs VALUES ('second database')")
        .await
        .expect("table");
    let rows = client
        .query(
            &format!("SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM docs"),
            &[],
        )
        .await
        .expect("prefetch path in a fresh database");
    let want = engine_embed(DEFAULT_MODEL, "{}", &["second database"]);
    assert!(max_abs_diff(&rows[0].get::<_, Vec<f32>>(0), &want[0]) <= 1e-6);
    let signatures: Vec<String> = client
        .query(
            "SELECT pg_get_function_identity_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pgml' AND p.proname = 'embed' ORDER BY 1",
            &[],
        )
        .await
        .expect("signatures")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        signatures,
        [
            "transformer text, inputs text[], kwargs jsonb -> SETOF real[]",
            "transformer text, text text, kwargs jsonb -> real[]",
        ]
    );
    let volatility: Vec<(String, bool)> = client
        .query(
            "SELECT p.provolatile::text, p.proisstrict FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pgml' AND p.proname = 'embed'",
            &[],
        )
        .await
        .expect("volatility")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        volatility.iter().all(|(v, strict)| v == "i" && *strict),
        "IMMUTABLE STRICT as in PostgresML: {volatility:?}"
    );
}

#[tokio::test]
async fn concurrent_sessions_each_get_their_own_vectors_on_every_path() {
    const SESSIONS: usize = 6;
    let setup = client().await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE conc_docs (session int, body text);
             INSERT INTO conc_docs SELECT s, 'session ' || s || ' text ' || i
               FROM generate_series(0, {}) s, generate_series(1, 4) i;
             CREATE FUNCTION conc_embed(t text) RETURNS real[] LANGUAGE plpgsql AS
               $$ BEGIN RETURN pgml.embed('{DEFAULT_MODEL}', t); END $$;",
            SESSIONS - 1
        ))
        .await
        .expect("schema");
    let texts: Vec<Vec<String>> = (0..SESSIONS)
        .map(|s| (1..=4).map(|i| format!("session {s} text {i}")).collect())
        .collect();
    let all: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
    let want = engine_embed(DEFAULT_MODEL, "{}", &all);
    let sessions = (0..SESSIONS).map(|s| async move {
        let client = client().await;
        let mut got = Vec::new();
        for path in ["constant", "prefetch", "upcall"] {
            let sql = match path {
                "constant" => format!(
                    "SELECT e FROM (VALUES {}) v(n, e) ORDER BY n",
                    (1..=4)
                        .map(|i| format!(
                            "({i}, pgml.embed('{DEFAULT_MODEL}', 'session {s} text {i}'))"
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "prefetch" => format!(
                    "SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM conc_docs
                      WHERE session = {s} ORDER BY body"
                ),
                _ => format!(
                    "SELECT conc_embed(body) FROM conc_docs WHERE session = {s} ORDER BY body"
                ),
            };
            let rows = client.query(&sql, &[]).await.expect(path);
            let vectors: Vec<Vec<f32>> = rows.iter().map(|r| r.get(0)).collect();
            got.push((path, vectors));
        }
        (s, got)
    });
    for (s, got) in join_all(sessions).await {
        for (path, vectors) in got {
            assert_eq!(vectors.len(), 4, "session {s} {path}");
            for (i, v) in vectors.iter().enumerate() {
                let diff = max_abs_diff(v, &want[s * 4 + i]);
                assert!(
                    diff <= 1e-6,
                    "session {s} {path} text {i}: differs by {diff}"
                );
            }
        }
    }
}
