//! Hostile and unusual-but-legitimate clients, for Postgres-exact semantics: statements that
//! once killed the process, client encodings other than UTF8, standard_conforming_strings=off
//! set at startup, and a multi-statement query whose last call fails. Each runs through the
//! release binary against the embedded Postgres, and the proxy must stay up for everyone.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use pgml_integration_tests::{
    connect, engine_embed, max_abs_diff, parse_real_array, pg_tool, stack, DEFAULT_MODEL,
};

/// Runs psql with raw bytes as `-c` commands (each one Query) and extra environment.
fn psql_bytes(commands: &[&[u8]], env: &[(&str, &str)]) -> (bool, Vec<u8>, String) {
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.args(["-X", "-A", "-t", "-d"]).arg(stack().url());
    for c in commands {
        cmd.arg("-c").arg(std::ffi::OsStr::from_bytes(c));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running psql");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn first_vector(stdout: &[u8]) -> Vec<f32> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no vector in {text:?}"));
    parse_real_array(line)
}

async fn proxy_still_serves_everyone() {
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .expect("a new session through the proxy");
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn absurd_parameter_numbers_get_postgres_errors_not_a_crash() {
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    for sql in [
        "SELECT pgml.embed('m','b'), $100000000000000",
        "SELECT pgml.embed('m', $65536)",
        "SELECT pgml.embed('m', $0)",
        "SELECT pgml.embed($99999999999999999999999, 'x')",
    ] {
        let err = client
            .simple_query(sql)
            .await
            .expect_err("Postgres refuses the statement");
        let code = err.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("42P02") | Some("42601")),
            "{sql}: {err:?}"
        );
        // The same session goes on.
        let row = client.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    }
    let err = client
        .prepare("SELECT pgml.embed('m', $1), $70000")
        .await
        .expect_err("Postgres refuses the statement");
    assert!(err.code().is_some(), "{err:?}");
    let deep = format!(
        "SELECT {}pgml.embed('m', 'x'){}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let err = client.simple_query(&deep).await.expect_err("too deep");
    assert!(err.code().is_some(), "{err:?}");
    proxy_still_serves_everyone().await;
}

#[tokio::test]
async fn latin1_clients_keep_their_connection_and_get_the_vector_of_their_text() {
    let latin1 = [("PGCLIENTENCODING", "LATIN1")];
    let (ok, out, err) = psql_bytes(&[b"SELECT 'caf\xe9'"], &latin1);
    assert!(ok, "{err}");
    assert_eq!(out, b"caf\xe9\n");

    let expected = &engine_embed(DEFAULT_MODEL, "{}", &["café"])[0];
    // Constant path.
    let sql = format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'caf\u{e9}')");
    let latin1_sql: Vec<u8> = sql.chars().map(|c| c as u8).collect();
    let (ok, out, err) = psql_bytes(&[&latin1_sql], &latin1);
    assert!(ok, "{err}");
    let got = first_vector(&out);
    assert!(max_abs_diff(&got, expected) < 1e-6, "constant path");

    // Row-dependent path (prefetch), and the upcall path (a DO block), in one session.
    let select = format!("SELECT pgml.embed('{DEFAULT_MODEL}', t) FROM latin1_words");
    let (ok, out, err) = psql_bytes(
        &[
            b"CREATE TEMP TABLE latin1_words (t text)",
            b"INSERT INTO latin1_words VALUES ('caf\xe9')",
            select.as_bytes(),
        ],
        &latin1,
    );
    assert!(ok, "{err}");
    let got = first_vector(&out);
    assert!(max_abs_diff(&got, expected) < 1e-6, "prefetch path");
    proxy_still_serves_everyone().await;
}

#[tokio::test]
async fn standard_conforming_strings_off_at_startup_is_honoured() {
    let off = [("PGOPTIONS", "-c standard_conforming_strings=off")];
    let sql = format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'a\\\\b')");
    let (ok, out, err) = psql_bytes(&[sql.as_bytes()], &off);
    assert!(ok, "{err}");
    let got = first_vector(&out);
    // With standard_conforming_strings off, 'a\\b' is the text a\b (one backslash).
    let one = &engine_embed(DEFAULT_MODEL, "{}", &["a\\b"])[0];
    let two = &engine_embed(DEFAULT_MODEL, "{}", &["a\\\\b"])[0];
    assert!(
        max_abs_diff(one, two) > 1e-4,
        "the two texts embed differently"
    );
    assert!(
        max_abs_diff(&got, one) < 1e-6,
        "embedded what Postgres reads"
    );

    // And with the default (on), the same literal is two backslashes.
    let (ok, out, err) = psql_bytes(&[sql.as_bytes()], &[]);
    assert!(ok, "{err}");
    assert!(max_abs_diff(&first_vector(&out), two) < 1e-6);
}

async fn kept(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM hostile_kept", &[])
        .await
        .unwrap()
        .get(0)
}

fn assert_unknown_model(err: &tokio_postgres::Error) {
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.as_deref().unwrap_or("").contains("no-such-model"),
        "{err:?}"
    );
}

#[tokio::test]
async fn statements_before_a_failing_call_run_as_postgres_runs_them() {
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    client
        .batch_execute("DROP TABLE IF EXISTS hostile_kept; CREATE TABLE hostile_kept (x int)")
        .await
        .unwrap();
    let err = client
        .simple_query(
            "BEGIN; INSERT INTO hostile_kept VALUES (1); COMMIT; \
             SELECT pgml.embed('no-such-model/at-all', 'x');",
        )
        .await
        .expect_err("the last statement fails");
    assert_unknown_model(&err);
    assert_eq!(
        kept(&client).await,
        1,
        "the committed row is kept, as Postgres keeps it"
    );

    // In one implicit transaction, the failure rolls back what came before (as in Postgres).
    let err = client
        .simple_query(
            "INSERT INTO hostile_kept VALUES (2); \
             SELECT pgml.embed('no-such-model/at-all', 'y'); INSERT INTO hostile_kept VALUES (3);",
        )
        .await
        .expect_err("the middle statement fails");
    assert_unknown_model(&err);
    assert_eq!(kept(&client).await, 1);
    client
        .batch_execute("DROP TABLE hostile_kept")
        .await
        .unwrap();
}

#[tokio::test]
async fn clients_cannot_name_files_on_the_proxy_host() {
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    let cases = [
        ("SELECT * FROM pgml.load_dataset('/etc/passwd')".to_owned(), "42501"),
        ("SELECT pgml.embed('/etc', 'x')".to_owned(), "42501"),
        ("SELECT pgml.embed('../../../etc', 'x')".to_owned(), "22023"),
        (
            format!(
                "SELECT pgml.embed('{DEFAULT_MODEL}', 'x', '{{\"file_name\": \"../../../../etc/passwd\"}}')"
            ),
            "22023",
        ),
    ];
    for (sql, code) in cases {
        let err = client.simple_query(&sql).await.expect_err(&sql);
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: {err:?}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        assert!(
            !db.message().contains("root:"),
            "{sql}: leaked {}",
            db.message()
        );
    }
    proxy_still_serves_everyone().await;
}

#[tokio::test]
async fn prefetch_leaves_nothing_in_the_session() {
    // The prefetched values travel inside the statement: no table of the session holds them,
    // before, during or after it, in or out of a transaction (a transaction-mode pooler may
    // run the next transaction on another backend; the client's role could alter a table).
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TEMP TABLE secret_notes (body text); \
             INSERT INTO secret_notes VALUES ('salary review'), ('merger plan')",
        )
        .await
        .unwrap();
    let select = format!("SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM secret_notes");
    let upcalls = stack().metric("pgml_proxy_upcalls_total");
    for in_transaction in [false, true] {
        if in_transaction {
            client.batch_execute("BEGIN").await.unwrap();
        }
        let rows = client.simple_query(&select).await.unwrap();
        assert_eq!(
            rows.iter()
                .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                .count(),
            2
        );
        let temp: Vec<String> = client
            .query(
                "SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = pg_my_temp_schema() AND c.relname <> 'secret_notes'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            temp.is_empty(),
            "in a transaction: {in_transaction}: {temp:?}"
        );
        if in_transaction {
            client.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert_eq!(
        stack().metric("pgml_proxy_upcalls_total"),
        upcalls,
        "served by prefetch, not by upcalls"
    );
}

#[tokio::test]
async fn a_forged_prefetch_table_changes_no_vector() {
    // Before shim 8 the shim read prefetched values from pg_temp.pgml_prefetch, which any role
    // can create in its own session: a forged row became the vector another role's trigger
    // stored. Now the values travel inside the statement and nothing reads such a table.
    let admin = connect(&stack().direct_url()).await.unwrap();
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS forged_victim, forged_docs;
             DROP ROLE IF EXISTS forger;
             CREATE ROLE forger LOGIN PASSWORD 'forger';
             CREATE TABLE forged_victim (body text, emb real[]);
             CREATE OR REPLACE FUNCTION forged_victim_embed() RETURNS trigger LANGUAGE plpgsql
               SECURITY DEFINER SET search_path = pg_catalog, public AS $f$
               BEGIN NEW.emb := pgml.embed('{DEFAULT_MODEL}', NEW.body); RETURN NEW; END $f$;
             CREATE TRIGGER forged_victim_embed BEFORE INSERT ON forged_victim
               FOR EACH ROW EXECUTE FUNCTION forged_victim_embed();
             GRANT INSERT ON forged_victim TO forger;
             CREATE TABLE forged_docs (body text); INSERT INTO forged_docs VALUES ('honest text');
             GRANT SELECT ON forged_docs TO forger;"
        ))
        .await
        .unwrap();
    let forger = connect(&stack().config_for("forger", "forger"))
        .await
        .unwrap();
    forger
        .batch_execute(&format!(
            "CREATE TEMP TABLE pgml_prefetch (transformer text, input text, kwargs jsonb, embedding real[], chunks text[]);
             INSERT INTO pgml_prefetch VALUES ('{DEFAULT_MODEL}', 'honest text', '{{}}', ARRAY[1, 2, 3]::real[], NULL);"
        ))
        .await
        .unwrap();
    let expected = engine_embed(DEFAULT_MODEL, "{}", &["honest text"]).remove(0);
    // A planned statement (its values spliced in) and an upcall from the victim's trigger.
    let planned = forger
        .query_one(
            &format!("SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM forged_docs"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(planned.get::<_, Vec<f32>>(0), expected);
    forger
        .batch_execute("INSERT INTO forged_victim (body) SELECT body FROM forged_docs")
        .await
        .unwrap();
    let stored = admin
        .query_one("SELECT emb FROM forged_victim", &[])
        .await
        .unwrap();
    assert_eq!(stored.get::<_, Vec<f32>>(0), expected);
}

#[tokio::test]
async fn upcalls_work_when_postgres_would_pick_a_parallel_plan() {
    // The extended protocol serves row-dependent calls through the upcall path; an answer is
    // deleted as it is read, which Postgres forbids inside a parallel plan.
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    client
        .batch_execute(
            "DROP TABLE IF EXISTS par_docs;
             CREATE TABLE par_docs AS
               SELECT 'parallel text ' || g AS body FROM generate_series(1, 20000) g;
             ANALYZE par_docs;
             SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2;",
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT count(pgml.embed('{DEFAULT_MODEL}', body)) FROM par_docs \
                 WHERE body LIKE '%1777%'"
            ),
            &[],
        )
        .await
        .expect("the upcalled statement");
    assert_eq!(row.get::<_, i64>(0), 12, "1777, 11777 and 17770..17779");
    let plan = client
        .query(
            "EXPLAIN SELECT count(body) FROM par_docs WHERE body LIKE '%1777%'",
            &[],
        )
        .await
        .unwrap();
    let plan: Vec<String> = plan.iter().map(|r| r.get(0)).collect();
    assert!(
        plan.iter().any(|l| l.contains("Gather")),
        "without pgml.embed the same statement is planned in parallel: {plan:?}"
    );
    client.batch_execute("DROP TABLE par_docs").await.unwrap();
}

#[tokio::test]
async fn a_multibyte_character_ending_in_a_backslash_byte_stays_inside_its_string() {
    // In SJIS, '表' is 0x95 0x5C: its second byte is ASCII '\'. A proxy reading bytes, not
    // characters, would see an escape (standard_conforming_strings off) and read past the
    // string's end. The proxy reads the session's encoding, as Postgres does.
    let env = [
        ("PGCLIENTENCODING", "SJIS"),
        ("PGOPTIONS", "-c standard_conforming_strings=off"),
    ];
    let mut sql = format!("SELECT pgml.embed('{DEFAULT_MODEL}', '").into_bytes();
    sql.extend_from_slice(b"\x95\x5c");
    sql.extend_from_slice(b"')");
    let (ok, out, err) = psql_bytes(&[&sql], &env);
    assert!(ok, "{err}");
    let expected = &engine_embed(DEFAULT_MODEL, "{}", &["表"])[0];
    assert!(max_abs_diff(&first_vector(&out), expected) < 1e-6);
}

#[tokio::test]
async fn a_forged_upcall_notice_gets_nothing_pgml_embed_would_not_and_leaves_nothing_behind() {
    // Any client can RAISE a NOTICE that looks like the shim's. The proxy answers it like a
    // pgml.embed call (an embedding of the client's own text), hides it, and the answer is
    // deleted once the client's statement has ended.
    let client = connect(&stack().config_for("postgres", "postgres"))
        .await
        .unwrap();
    let id = "0f0e0d0c-0b0a-4909-8807-060504030201";
    let messages = client
        .simple_query(&format!(
            "DO $$ BEGIN RAISE NOTICE USING MESSAGE = 'pgml-proxy:upcall:{id}', \
             DETAIL = json_build_object('model', '{DEFAULT_MODEL}', 'inputs', ARRAY['forged'], \
                                        'kwargs', '{{}}'::jsonb)::text; END $$"
        ))
        .await
        .expect("the DO block runs");
    assert!(messages
        .iter()
        .all(|m| !matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    let admin = connect(&stack().direct_url()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pgml_proxy.upcall_answer WHERE request_id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the forged request's answer is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
