//! Transaction-mode poolers: PgBouncer 1.18 (Debian's package, installed by `make setup`) in
//! transaction mode with `ignore_startup_parameters = extra_float_digits` and nothing else,
//! (a) between the proxy and Postgres, for the relayed sessions and the service connection,
//! with clients that use no named prepared statements (as PgBouncer 1.18 users must), and
//! (b) in front of the proxy, in session and transaction mode. The article's flow runs as a
//! plain application role with no CREATE anywhere, through a pool of two server connections, so
//! consecutive transactions of one client run on different backends.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgml_integration_tests::{
    connect, engine_embed, free_port, proxy_bin, run_tool, scratch_dir, stack, Proxy, DEFAULT_MODEL,
};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

const SERVICE_PASSWORD: &str = "pooled-service-secret";
const APP_PASSWORD: &str = "app-secret";
const DB: &str = "pooled";

/// A PgBouncer child, killed on drop.
struct Bouncer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bouncer {
    /// PgBouncer in `mode` in front of 127.0.0.1:`target` (database `DB` and `postgres`);
    /// None, with the reason printed, where PgBouncer is not installed.
    fn start(label: &str, target: u16, mode: &str) -> Option<Bouncer> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            eprintln!(
                "SKIPPED: PgBouncer is not installed (`make setup` installs it as root: apt-get install -y pgbouncer)"
            );
            return None;
        };
        let dir = scratch_dir().join(label);
        fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let users = dir.join("userlist.txt");
        fs::write(
            &users,
            format!(
                "\"postgres\" \"postgres\"\n\"app\" \"{APP_PASSWORD}\"\n\"pgml_proxy_service\" \"{SERVICE_PASSWORD}\"\n"
            ),
        )
        .unwrap();
        let ini = dir.join("pgbouncer.ini");
        fs::write(
            &ini,
            format!(
                "[databases]\n\
                 {DB} = host=127.0.0.1 port={target} dbname={DB}\n\
                 postgres = host=127.0.0.1 port={target} dbname=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {}\n\
                 pool_mode = {mode}\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 default_pool_size = 2\n\
                 min_pool_size = 2\n\
                 server_round_robin = 1\n\
                 max_client_conn = 100\n",
                users.display()
            ),
        )
        .unwrap();
        let log = dir.join("pgbouncer.log");
        let mut cmd = Command::new(bin);
        // PgBouncer refuses to run as root; the embedded stack created this account.
        if is_root() {
            cmd.args(["-u", "pgmlproxy"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(dir.join("pgbouncer.err")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting pgbouncer");
        let bouncer = Bouncer { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}\n{}",
                fs::read_to_string(&bouncer.log).unwrap_or_default(),
                fs::read_to_string(dir.join("pgbouncer.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(bouncer)
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// Creates database `DB` the way a managed user has it: pgvector, the application role `app`
/// with no CREATE on any schema, the tables of the article's flow owned by the admin and
/// granted to `app`, and the service role's password known to the pooler.
async fn prepare_database() {
    let stack = stack();
    let admin = connect(&stack.direct_url()).await.unwrap();
    for statement in [
        format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
        format!("CREATE DATABASE {DB}"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN
                CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'; END IF; END $$;
             ALTER ROLE pgml_proxy_service PASSWORD '{SERVICE_PASSWORD}';"
        ))
        .await
        .unwrap();
    let url = db_url();
    let db = connect(&url).await.unwrap();
    db.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS vector;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         REVOKE TEMPORARY ON DATABASE {DB} FROM PUBLIC;
         CREATE TABLE reviews (id int PRIMARY KEY, body text NOT NULL, emb vector(384), copy vector(384));
         INSERT INTO reviews SELECT i, 'review number ' || i || ': a kids movie about dragons' FROM generate_series(1, 40) i;
         CREATE TABLE copies (id int, emb real[]);
         CREATE FUNCTION embed_on_insert() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN NEW.emb := pgml.embed('{DEFAULT_MODEL}', NEW.body); RETURN NEW; END $f$;
         CREATE TABLE notes (id int, body text, emb real[]);
         CREATE TRIGGER notes_embed BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION embed_on_insert();
         CREATE TABLE generated (body text, emb real[] GENERATED ALWAYS AS (pgml.embed('{DEFAULT_MODEL}', body)) STORED);
         GRANT SELECT, INSERT, UPDATE ON reviews, copies, notes, generated TO app;"
    ))
    .await
    .unwrap();
}

/// The superuser straight to database `DB` of the embedded Postgres.
fn db_url() -> String {
    format!(
        "postgres://postgres:postgres@127.0.0.1:{}/{DB}",
        stack().pg_port.unwrap()
    )
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<&tokio_postgres::SimpleQueryRow> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn floats(text: &str) -> Vec<f32> {
    text.trim_matches(|c| c == '{' || c == '}' || c == '[' || c == ']')
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Waits until consecutive transactions of one client through `url` run on different
/// backends (the pooler keeps two server connections and hands them out in turn).
async fn backends_alternate(url: &str, tag: &str) {
    let c = connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut pids = std::collections::HashSet::new();
        for _ in 0..6 {
            let m = c.simple_query("SELECT pg_backend_pid()").await.unwrap();
            pids.insert(rows(&m)[0].get(0).unwrap().to_owned());
        }
        if pids.len() > 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: every transaction ran on backend {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The article's flow, every call shape, as `app` through `url` (a proxy or a pooler).
async fn article_flow(url: &str, tag: &str) {
    let c = connect(url).await.unwrap_or_else(|e| panic!("{tag}: {e}"));
    let text = "review number 7: a kids movie about dragons";
    let expected = engine_embed(DEFAULT_MODEL, "{}", &[text]).remove(0);

    // Constant argument.
    let m = c
        .simple_query(&format!("SELECT pgml.embed('{DEFAULT_MODEL}', '{text}')"))
        .await
        .unwrap_or_else(|e| panic!("{tag}: constant: {e}"));
    assert_eq!(floats(rows(&m)[0].get(0).unwrap()), expected, "{tag}");

    // Column argument: SELECT ... LIMIT (simple protocol, then unnamed extended statements).
    let m = c
        .simple_query(&format!(
            "SELECT id, pgml.embed('{DEFAULT_MODEL}', body) AS embedding FROM reviews ORDER BY id LIMIT 10"
        ))
        .await
        .unwrap_or_else(|e| panic!("{tag}: column SELECT: {e}"));
    let r = rows(&m);
    assert_eq!(r.len(), 10, "{tag}");
    assert_eq!(floats(r[6].get(1).unwrap()), expected, "{tag}");
    let typed = c
        .query_typed(
            "SELECT pgml.embed($1, body) FROM reviews WHERE id = $2",
            &[(&DEFAULT_MODEL, Type::TEXT), (&7i32, Type::INT4)],
        )
        .await
        .unwrap_or_else(|e| panic!("{tag}: extended column SELECT: {e:?}"));
    assert_eq!(typed[0].get::<_, Vec<f32>>(0), expected, "{tag}");

    // UPDATE backfill into a pgvector column, then INSERT ... SELECT.
    c.simple_query(&format!(
        "UPDATE reviews SET emb = pgml.embed('{DEFAULT_MODEL}', body) WHERE id BETWEEN 1 AND 20 AND emb IS NULL"
    ))
    .await
    .unwrap_or_else(|e| panic!("{tag}: UPDATE: {e}"));
    c.simple_query(&format!(
        "INSERT INTO copies SELECT id, pgml.embed('{DEFAULT_MODEL}', body) FROM reviews WHERE id <= 5"
    ))
    .await
    .unwrap_or_else(|e| panic!("{tag}: INSERT ... SELECT: {e}"));
    let m = c
        .simple_query("SELECT emb::text FROM reviews WHERE id = 7")
        .await
        .unwrap();
    assert_eq!(floats(rows(&m)[0].get(0).unwrap()), expected, "{tag}");

    // The article's DO loop with COMMIT (upcalls from server-side code).
    c.simple_query(&format!(
        "DO $$ BEGIN FOR i IN 21..40 BY 10 LOOP
           UPDATE reviews SET emb = pgml.embed('{DEFAULT_MODEL}', body) WHERE id BETWEEN i AND i + 9 AND emb IS NULL;
           COMMIT; END LOOP; END $$"
    ))
    .await
    .unwrap_or_else(|e| panic!("{tag}: DO block: {e}"));
    let m = c
        .simple_query("SELECT count(*) FROM reviews WHERE emb IS NULL")
        .await
        .unwrap();
    assert_eq!(rows(&m)[0].get(0), Some("0"), "{tag}");

    // A trigger and a generated column (upcalls), then a batch call.
    c.simple_query(&format!(
        "INSERT INTO notes (id, body) VALUES (1, '{text}')"
    ))
    .await
    .unwrap_or_else(|e| panic!("{tag}: trigger: {e}"));
    c.simple_query(&format!("INSERT INTO generated (body) VALUES ('{text}')"))
        .await
        .unwrap_or_else(|e| panic!("{tag}: generated column: {e}"));
    let m = c
        .simple_query("SELECT (SELECT emb::text FROM notes), (SELECT emb::text FROM generated)")
        .await
        .unwrap();
    assert_eq!(floats(rows(&m)[0].get(0).unwrap()), expected, "{tag}");
    assert_eq!(floats(rows(&m)[0].get(1).unwrap()), expected, "{tag}");
    let m = c
        .simple_query(&format!(
            "SELECT pgml.embed('{DEFAULT_MODEL}', ARRAY['{text}', 'hi mom'])"
        ))
        .await
        .unwrap_or_else(|e| panic!("{tag}: batch: {e}"));
    assert_eq!(rows(&m).len(), 2, "{tag}");
    assert_eq!(floats(rows(&m)[0].get(0).unwrap()), expected, "{tag}");

    // pgml.chunk (constant and column) and pgml.rank.
    let m = c
        .simple_query(
            "SELECT chunk FROM pgml.chunk('recursive_character', 'one two three four five six', '{\"chunk_size\": 10, \"chunk_overlap\": 0}')",
        )
        .await
        .unwrap_or_else(|e| panic!("{tag}: chunk: {e}"));
    assert!(rows(&m).len() >= 3, "{tag}");
    let m = c
        .simple_query(
            "SELECT id, (pgml.chunk('character', body, '{\"chunk_size\": 20, \"chunk_overlap\": 0, \"separator\": \" \"}')).chunk FROM reviews WHERE id <= 2",
        )
        .await
        .unwrap_or_else(|e| panic!("{tag}: column chunk: {e}"));
    assert!(rows(&m).len() >= 4, "{tag}");
    let m = c
        .simple_query(
            "SELECT corpus_id FROM pgml.rank('aegis/policy-nli-cross-encoder', 'dragons', ARRAY['a cooking show', 'a movie about dragons'])",
        )
        .await
        .unwrap_or_else(|e| panic!("{tag}: rank: {e}"));
    assert_eq!(rows(&m).len(), 2, "{tag}");

    // Nearest-neighbour search with the query embedding spliced as a constant.
    let m = c
        .simple_query(&format!(
            "SELECT id FROM reviews ORDER BY emb <=> pgml.embed('{DEFAULT_MODEL}', '{text}')::vector LIMIT 1"
        ))
        .await
        .unwrap_or_else(|e| panic!("{tag}: search: {e}"));
    assert_eq!(rows(&m)[0].get(0), Some("7"), "{tag}");
}

/// psycopg 3 with its named prepared statements off (`prepare_threshold=None`, what PgBouncer
/// 1.18 users set): server-side parameters, a column call and a constant call.
fn psycopg_flow(port: u16, tag: &str) {
    let script = format!(
        r#"
import psycopg
with psycopg.connect("host=127.0.0.1 port={port} user=app password={APP_PASSWORD} dbname={DB}",
                     prepare_threshold=None, autocommit=True) as conn:
    for _ in range(3):
        rows = conn.execute("SELECT id, pgml.embed(%s, body) FROM reviews WHERE id <= %s ORDER BY id",
                            ("{DEFAULT_MODEL}", 3)).fetchall()
        assert len(rows) == 3 and len(rows[0][1]) == 384, rows
        one = conn.execute("SELECT pgml.embed(%s, %s)", ("{DEFAULT_MODEL}", "hi mom")).fetchone()[0]
        assert len(one) == 384
    with conn.transaction():
        conn.execute("UPDATE reviews SET copy = pgml.embed(%s, body)::vector WHERE id <= %s", ("{DEFAULT_MODEL}", 5))
    print("psycopg ok", conn.execute("SELECT count(*) FROM reviews WHERE copy IS NOT NULL").fetchone()[0])
"#
    );
    let (ok, out, err) =
        run_tool(Command::new(pgml_integration_tests::venv_python()).args(["-c", &script]));
    assert!(
        ok && out.contains("psycopg ok 5"),
        "{tag}: psycopg: {out}\n{err}"
    );
}

/// pgjdbc with `prepareThreshold=0` (what PgBouncer 1.18 users set): parameters, an UPDATE, a
/// DO block inside a transaction (integration-tests/clients/PooledJdbc.java, run as a source
/// file). Skipped with the reason where Debian's pgjdbc jar is missing.
fn jdbc_flow(port: u16, tag: &str) {
    let jar = std::env::var("PGJDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/share/java/postgresql.jar"));
    if !jar.is_file() {
        eprintln!(
            "SKIPPED jdbc: no pgjdbc at {} (`make setup` as root installs libpostgresql-jdbc-java)",
            jar.display()
        );
        return;
    }
    let source =
        pgml_integration_tests::workspace_dir().join("integration-tests/clients/PooledJdbc.java");
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{port}/{DB}?user=app&password={APP_PASSWORD}&prepareThreshold=0"
    );
    let (ok, out, err) = run_tool(
        Command::new("java")
            .arg("-cp")
            .arg(&jar)
            .arg(&source)
            .args([&url, DEFAULT_MODEL]),
    );
    assert!(ok && out.contains("jdbc ok 7"), "{tag}: jdbc: {out}\n{err}");
}

async fn reset_tables() {
    let url = db_url();
    let db = connect(&url).await.unwrap();
    db.batch_execute(
        "UPDATE reviews SET emb = NULL, copy = NULL; TRUNCATE copies, notes, generated",
    )
    .await
    .unwrap();
}

/// (a) proxy -> PgBouncer (transaction mode) -> Postgres, relayed sessions and the service
/// connection both through the pooler; then (b) PgBouncer in front of the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_article_flow_works_through_transaction_mode_pgbouncer_both_ways() {
    let stack = stack();
    let pg_port = stack.pg_port.unwrap();
    prepare_database().await;
    let Some(bouncer) = Bouncer::start("bouncer-tx", pg_port, "transaction") else {
        return;
    };
    let upstream = format!("postgres://127.0.0.1:{}", bouncer.port);
    let service = format!(
        "postgres://pgml_proxy_service:{SERVICE_PASSWORD}@127.0.0.1:{}/{DB}",
        bouncer.port
    );
    let proxy = Proxy::spawn(
        "behind-pooler",
        &[
            "--upstream",
            &upstream,
            "--service-url",
            &service,
            "--offline",
        ],
    );
    let through = |port: u16| {
        format!("host=127.0.0.1 port={port} user=app password={APP_PASSWORD} dbname={DB}")
    };
    backends_alternate(&through(proxy.port), "proxy -> pgbouncer(transaction)").await;
    article_flow(&through(proxy.port), "proxy -> pgbouncer(transaction)").await;
    psycopg_flow(proxy.port, "proxy -> pgbouncer(transaction)");
    reset_tables().await;
    jdbc_flow(proxy.port, "proxy -> pgbouncer(transaction)");

    // The article's first step, as the database's admin: the dataset is created and filled in
    // one transaction of the proxy's own on the client's session.
    let loader = connect(&format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname={DB}",
        proxy.port
    ))
    .await
    .unwrap();
    loader
        .simple_query("SELECT * FROM pgml.load_dataset('reviews_sample', NULL, 20)")
        .await
        .unwrap_or_else(|e| panic!("load_dataset through the pooler: {e:?}"));
    let m = loader
        .simple_query("SELECT count(*) FROM pgml.reviews_sample")
        .await
        .unwrap();
    assert_eq!(rows(&m)[0].get(0), Some("20"));
    assert!(
        !proxy.log().contains("already exists"),
        "the service connection's statements collided: {}",
        proxy.log()
    );

    // doctor tells the pooler from Postgres itself.
    let doctor = |port: u16| {
        let url = format!("postgres://app:{APP_PASSWORD}@127.0.0.1:{port}/{DB}");
        let (_, out, err) =
            run_tool(Command::new(proxy_bin()).args(["doctor", "--upstream", &url]));
        format!("{out}{err}")
    };
    let report = doctor(bouncer.port);
    assert!(
        report.contains("transaction-mode pooler: consecutive transactions"),
        "{report}"
    );
    assert!(report.contains("pgml shim version 11"), "{report}");
    let report = doctor(pg_port);
    assert!(
        report.contains("no transaction-mode pooler seen"),
        "{report}"
    );

    // A session that reaches the pooler directly is told within seconds, clearly.
    let direct = connect(&through(bouncer.port)).await.unwrap();
    let started = Instant::now();
    let err = direct
        .simple_query(&format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'x')"))
        .await
        .expect_err("not through the proxy");
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "{err:?}");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("not connected through")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // (b) client -> PgBouncer -> proxy -> Postgres, transaction then session mode; in session
    // mode PgBouncer resets each server connection (DISCARD ALL) between clients.
    let direct_service =
        format!("postgres://pgml_proxy_service:{SERVICE_PASSWORD}@127.0.0.1:{pg_port}/{DB}");
    let behind = Proxy::spawn(
        "in-front-of-postgres",
        &[
            "--upstream",
            &format!("postgres://127.0.0.1:{pg_port}"),
            "--service-url",
            &direct_service,
            "--offline",
        ],
    );
    for mode in ["transaction", "session"] {
        reset_tables().await;
        let front = Bouncer::start(&format!("front-{mode}"), behind.port, mode).unwrap();
        let tag = format!("pgbouncer({mode}) -> proxy");
        if mode == "transaction" {
            backends_alternate(&through(front.port), &tag).await;
        }
        article_flow(&through(front.port), &tag).await;
        psycopg_flow(front.port, &tag);
        reset_tables().await;
        jdbc_flow(front.port, &tag);
        // Later sessions on the same server connections still work.
        for _ in 0..3 {
            let c = connect(&through(front.port)).await.unwrap();
            let m = c
                .simple_query(&format!(
                    "SELECT pgml.embed('{DEFAULT_MODEL}', body) FROM reviews WHERE id = 7"
                ))
                .await
                .unwrap_or_else(|e| panic!("{tag}: later session: {e}"));
            assert_eq!(rows(&m).len(), 1);
        }
    }
}
