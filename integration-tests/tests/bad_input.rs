//! Malformed clients: garbage bytes, a truncated message, absurd length prefixes and an
//! unknown startup code each get a FATAL 08P01 or a close, and the next client still works.
//! Also: the connection limit (53300), an unreachable upstream (08006), and sessions still
//! open when the shutdown timeout runs out (57P01, their transaction rolled back).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pgml_integration_tests::{connect, first_error, free_port, stack, startup_packet, Proxy};
use tokio_postgres::error::SqlState;

/// Sends `bytes` on a fresh connection and returns everything the proxy answers before closing.
fn exchange(port: u16, chunks: &[&[u8]]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for chunk in chunks {
        conn.write_all(chunk).unwrap();
    }
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    answer
}

fn startup(user: &str) -> Vec<u8> {
    startup_packet(&[("user", user), ("database", "postgres")])
}

/// The SQLSTATE of the first ErrorResponse in `answer`, if any.
fn error_code(answer: &[u8]) -> Option<String> {
    first_error(answer)
        .map(|(_, code)| code)
        .filter(|code| !code.is_empty())
}

async fn still_serves() {
    let client = connect(&stack().url())
        .await
        .expect("a normal client after bad input");
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test]
async fn garbage_bytes_get_08p01_and_the_proxy_keeps_serving() {
    let answer = exchange(stack().port, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    still_serves().await;
}

#[tokio::test]
async fn unknown_startup_code_gets_08p01() {
    let answer = exchange(stack().port, &[&[0, 0, 0, 8, 0, 9, 0, 0]]);
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    still_serves().await;
}

#[tokio::test]
async fn absurd_length_prefix_after_startup_gets_08p01() {
    // Startup, then (during the SCRAM exchange) a message claiming 2 GB.
    let answer = exchange(
        stack().port,
        &[
            &startup("postgres"),
            &[b'p', 0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
        ],
    );
    assert_eq!(error_code(&answer).as_deref(), Some("08P01"), "{answer:?}");
    still_serves().await;
}

#[tokio::test]
async fn truncated_message_then_close_does_not_disturb_others() {
    let mut conn = TcpStream::connect(("127.0.0.1", stack().port)).unwrap();
    conn.write_all(&startup("postgres")).unwrap();
    conn.write_all(&[b'p', 0, 0, 0, 100, b'S', b'C']).unwrap();
    drop(conn);
    let answer = exchange(stack().port, &[&startup("postgres")[..6]]);
    assert!(error_code(&answer).is_none());
    still_serves().await;
}

#[tokio::test]
async fn past_max_connections_clients_get_53300() {
    let proxy = Proxy::spawn(
        "max-connections",
        &[
            "--upstream",
            &stack().direct_url(),
            "--max-connections",
            "1",
        ],
    );
    let url = proxy.url();
    let first = connect(&url).await.expect("first client within the limit");
    let Err(err) = connect(&url).await else {
        panic!("second client must be refused");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    // The slot frees once the proxy sees the close: until then a new client is refused (53300).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        match connect(&url).await {
            Ok(client) => break client,
            Err(e) if e.code().map(|c| c.code()) == Some("53300") => {
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    again.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn unreachable_upstream_gets_08006_and_is_retried_next_time() {
    let dead_port = free_port();
    let proxy = Proxy::spawn(
        "unreachable",
        &["--upstream", &format!("postgres://127.0.0.1:{dead_port}")],
    );
    for _ in 0..2 {
        let Err(err) = connect(&proxy.url()).await else {
            panic!("no upstream");
        };
        assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");
    }
}

#[tokio::test]
async fn a_session_open_past_the_shutdown_timeout_gets_57p01_and_is_rolled_back() {
    cut_at_the_shutdown_timeout("shutdown", "shutdown_rows", 0).await;
}

#[tokio::test]
async fn a_session_lent_to_the_relay_core_is_cut_with_57p01_and_rolled_back_too() {
    // 100 plain statements in a row: the session is lent to its relay thread's core (after
    // 64), and the cut has to recall it from there to send the FATAL.
    cut_at_the_shutdown_timeout("shutdown-lent", "shutdown_rows_lent", 100).await;
}

/// A session in an open transaction, after `statements` plain ones, when the proxy begins
/// to shut down with a 1 s timeout: it gets 57P01 at the cut, and its transaction is gone.
async fn cut_at_the_shutdown_timeout(name: &str, table: &str, statements: usize) {
    let proxy = Proxy::spawn(
        name,
        &[
            "--upstream",
            &stack().direct_url(),
            "--shutdown-timeout",
            "1",
        ],
    );
    let admin = connect(&stack().direct_url()).await.unwrap();
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)"
        ))
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&proxy.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    for _ in 0..statements {
        client
            .simple_query(&format!("SELECT 1 /* {table} */"))
            .await
            .unwrap();
    }

    let started = Instant::now();
    proxy.begin_shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("the session is ended after the shutdown timeout")
        .unwrap();
    let err = ended.expect_err("the client is told why its session ends");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended before the shutdown timeout: {:?}",
        started.elapsed()
    );
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the proxy exits after its last session");
    assert!(status.success(), "{status}\n{}", proxy.log());

    // The open transaction went with its upstream connection: no backend is left holding it.
    let mut open = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        open = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state LIKE 'idle in transaction%' AND query LIKE $1",
                &[&format!("%{table} %")],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "the upstream session must be gone");
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}
