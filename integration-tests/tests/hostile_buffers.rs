//! Memory bounds on the relay path, through the release proxy with an 8 MiB
//! `--client-buffer-budget-mb` (2 MiB per session): clients that announce large messages and
//! send little hold only what they sent, so other sessions' 100 KB queries go through; a
//! server message over the session's share (a 300 MB NOTICE) ends only its session, without
//! the proxy's memory growing; a session that prepares statements with pgml calls without end
//! is ended at the bound, the others go on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use pgml_integration_tests::{
    conf_load_time, connect, psql_script, scratch_dir, spawn_embedded, startup_packet,
    wait_for_reload, Proxy,
};
use tokio_postgres::error::SqlState;

const MIB: usize = 1024 * 1024;
/// What one session may hold: a quarter of the proxy's 8 MiB budget.
const SESSION_SHARE: usize = 2 * MIB;

/// The proxy of this file (its own embedded Postgres), and a role that logs in without a
/// password (`trust` lines first in pg_hba.conf) for the hand-written protocol clients.
fn proxy() -> &'static Proxy {
    static PROXY: OnceLock<Proxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let proxy = spawn_embedded(
            "buffers",
            "pgdata-buffers",
            &["--client-buffer-budget-mb", "8"],
        );
        let script = "CREATE ROLE buffers_trust LOGIN; \
            DO $$ DECLARE f text := current_setting('hba_file'); old text := pg_read_file(f); BEGIN \
              EXECUTE format($q$COPY (SELECT l FROM ( \
                SELECT l, 0 AS o, n FROM unnest(ARRAY[ \
                  'host all buffers_trust 127.0.0.1/32 trust', \
                  'local all buffers_trust trust']) WITH ORDINALITY AS a(l, n) \
                UNION ALL \
                SELECT replace(l, E'\\t', ' '), 1, n \
                  FROM regexp_split_to_table(%L, E'\\n') WITH ORDINALITY AS b(l, n) \
              ) s ORDER BY o, n) TO %L$q$, old, f); \
            END $$; SELECT pg_reload_conf();\n";
        let before = conf_load_time(&proxy.direct_url());
        let (ok, out, err) = psql_script(
            &proxy.direct_url(),
            &scratch_dir().join("buffers-trust"),
            script,
        );
        assert!(ok && !err.contains("ERROR"), "{out}\n{err}");
        wait_for_reload(&proxy.direct_url(), &before);
        proxy
    })
}

/// The tests of this file run one at a time: each reads the proxy's peak memory or fills its
/// budget, which the others would disturb.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The proxy's process id (the `pgml-proxy serve` listening on its port).
fn proxy_pid(proxy: &Proxy) -> u32 {
    let listen = format!("127.0.0.1:{}", proxy.port);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.contains(&&b"serve"[..]) && args.contains(&listen.as_bytes())
            })
        })
        .expect("the proxy's process")
}

/// Resets the proxy's peak resident memory (VmHWM) to what it uses now (Linux 4.0+), so
/// that `peak_rss` then tells what the next steps needed: the process's peak so far includes
/// loading the model.
fn reset_peak_rss(proxy: &Proxy) {
    let pid = proxy_pid(proxy);
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM");
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The header of a message of `total` bytes (tag included).
fn header(tag: u8, total: usize) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(total as u32 - 1).to_be_bytes());
    out
}

/// A Parse of statement `name` with `sql` and no declared parameter types.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

/// A hand-written protocol client, logged in as the trusted role.
fn login() -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", proxy().port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    conn.write_all(&startup_packet(&[
        ("user", "buffers_trust"),
        ("database", "postgres"),
    ]))
    .unwrap();
    until_ready(&mut conn);
    conn
}

/// Reads up to ReadyForQuery; the messages' tags, and the text of each ErrorResponse.
fn until_ready(conn: &mut TcpStream) -> (Vec<u8>, Vec<String>) {
    let (mut tags, mut errors) = (Vec::new(), Vec::new());
    loop {
        let mut head = [0u8; 5];
        conn.read_exact(&mut head)
            .expect("a message before the end");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        conn.read_exact(&mut body).unwrap();
        tags.push(head[0]);
        if head[0] == b'E' {
            errors.push(String::from_utf8_lossy(&body).into_owned());
        }
        if head[0] == b'Z' {
            return (tags, errors);
        }
    }
}

/// Everything the proxy sends until it closes the connection, as text.
fn until_closed(conn: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `answer` ends with a FATAL ErrorResponse of `code` (errors of the upstream's may
/// come first: it answers the messages before the one the proxy refuses).
fn ends_with_fatal(answer: &str, code: &str) -> bool {
    answer
        .rsplit_once("SFATAL\0")
        .is_some_and(|(_, fatal)| fatal.contains(&format!("C{code}\0")))
}

/// A Query of exactly `total` bytes: `SELECT 1` and spaces.
fn padded_query(total: usize) -> Vec<u8> {
    let mut query = header(b'Q', total);
    query.extend_from_slice(b"SELECT 1");
    query.resize(total - 1, b' ');
    query.push(0);
    query
}

/// An ordinary session runs a 100 KB query.
async fn hundred_kilobyte_query() -> Result<i64, tokio_postgres::Error> {
    let client = connect(&proxy().config_for("postgres", "postgres")).await?;
    let text = "x".repeat(100_000);
    let row = client
        .query_one(&format!("SELECT length('{text}')::int8"), &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn squatters_announcing_the_whole_budget_do_not_starve_other_sessions() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy();
    reset_peak_rss(proxy);
    let rss_before = proxy.peak_rss();
    // Four clients each announce a message of a whole session share (8 MiB together: the
    // whole budget) and send 10 KB of it; the proxy holds what they sent, not what they
    // announced.
    let mut squatters = Vec::new();
    for _ in 0..4 {
        let mut conn = login();
        let query = padded_query(SESSION_SHARE);
        conn.write_all(&query[..10 * 1024]).unwrap();
        squatters.push((conn, query));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: Vec<_> = (0..8)
        .map(|_| tokio::spawn(hundred_kilobyte_query()))
        .collect();
    for other in others {
        let length = other
            .await
            .unwrap()
            .expect("a 100 KB query beside the squatters");
        assert_eq!(length, 100_000);
    }

    // A squatter that does send its message after all is served.
    for (i, (mut conn, query)) in squatters.into_iter().enumerate() {
        if i == 0 {
            conn.write_all(&query[10 * 1024..]).unwrap();
            let (tags, errors) = until_ready(&mut conn);
            assert!(errors.is_empty(), "{errors:?}");
            assert!(tags.contains(&b'D'), "a row: {tags:?}");
        }
    }
    // One announces 1 GB: refused from its header, nothing held.
    let mut greedy = login();
    greedy.write_all(&header(b'Q', 1 << 30)).unwrap();
    let refused = until_closed(&mut greedy);
    assert!(ends_with_fatal(&refused, "54000"), "{refused}");
    assert!(refused.contains("client message too large"), "{refused}");

    let growth = proxy.peak_rss().saturating_sub(rss_before);
    eprintln!(
        "peak RSS growth beside the squatters: {} KiB",
        growth / 1024
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_server_notice_ends_only_its_session_and_the_proxy_stays_small() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy();
    let client = connect(&proxy.config_for("postgres", "postgres"))
        .await
        .unwrap();
    // A notice within the session's share still reaches the client.
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE '%', repeat('x', 1024 * 1024); END $$")
        .await
        .expect("a 1 MB notice passes");
    reset_peak_rss(proxy);
    let rss_before = proxy.peak_rss();

    let result = client
        .batch_execute("DO $$ BEGIN RAISE NOTICE '%', repeat('x', 300 * 1024 * 1024); END $$")
        .await;
    let growth = proxy.peak_rss().saturating_sub(rss_before);
    eprintln!("peak RSS growth for a 300 MB notice: {} KiB", growth / 1024);
    assert!(growth < 32 * MIB as u64, "the proxy grew by {growth} bytes");
    let err = result.expect_err("a 300 MB notice ends the session");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code(), &SqlState::PROGRAM_LIMIT_EXCEEDED, "{db:?}");
    assert_eq!(db.severity(), "FATAL");
    assert!(db.message().contains("server message too large"), "{db:?}");
    assert!(
        db.detail()
            .unwrap_or_default()
            .contains("--client-buffer-budget-mb"),
        "{db:?}"
    );
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());

    // An error that large likewise.
    let client = connect(&proxy.config_for("postgres", "postgres"))
        .await
        .unwrap();
    let err = client
        .batch_execute("DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', 8 * 1024 * 1024); END $$")
        .await
        .expect_err("an 8 MB error ends the session");
    let code = err.as_db_error().map(|db| db.code().clone());
    assert_eq!(code, Some(SqlState::PROGRAM_LIMIT_EXCEEDED), "{err:?}");

    let growth = proxy.peak_rss().saturating_sub(rss_before);
    eprintln!(
        "peak RSS growth with an 8 MB error too: {} KiB",
        growth / 1024
    );
    assert!(growth < 32 * MIB as u64, "the proxy grew by {growth} bytes");

    let other = connect(&proxy.config_for("postgres", "postgres"))
        .await
        .unwrap();
    let row = other.query_one("SELECT 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[test]
fn a_session_preparing_without_end_is_ended_at_the_bound_and_others_go_on() {
    let _serial = SERIAL.blocking_lock();
    // 10,001 named statements with a pgml call, in one batch.
    let mut conn = login();
    let mut batch = Vec::new();
    for i in 0..=10_000 {
        batch.extend_from_slice(&parse(
            &format!("s{i}"),
            "SELECT pgml.embed('intfloat/e5-small-v2', 'x')",
        ));
    }
    batch.extend_from_slice(&message(b'S', b""));
    let _ = conn.write_all(&batch);
    let answer = until_closed(&mut conn);
    assert!(ends_with_fatal(&answer, "54000"), "{answer:.600}");
    assert!(
        answer.contains("too many prepared statements with pgml.* calls"),
        "{answer:.300}"
    );

    // Fewer statements with 1.5 MB of text each reach the bound on bytes (32 MiB).
    let mut conn = login();
    let text = "y".repeat(3 * MIB / 2);
    for i in 0..40 {
        let sql = format!("SELECT pgml.embed('intfloat/e5-small-v2', '{text}')");
        if conn.write_all(&parse(&format!("big{i}"), &sql)).is_err() {
            break;
        }
    }
    let _ = conn.write_all(&message(b'S', b""));
    let answer = until_closed(&mut conn);
    assert!(ends_with_fatal(&answer, "54000"), "{answer:.600}");

    let mut other = login();
    other.write_all(&message(b'Q', b"SELECT 1\0")).unwrap();
    let (tags, errors) = until_ready(&mut other);
    assert!(
        errors.is_empty() && tags.contains(&b'D'),
        "{tags:?} {errors:?}"
    );
}
