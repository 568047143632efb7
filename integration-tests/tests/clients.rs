//! tokio-postgres through the proxy: simple and extended protocol, prepared statement reuse,
//! pipelining, binary float4[] and pgvector, COPY both ways, LISTEN/NOTIFY, cancel, errors.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use pgml_integration_tests::{connect, scratch_dir, stack, Proxy};
use pgvector::Vector;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

async fn client() -> tokio_postgres::Client {
    connect(&stack().url())
        .await
        .expect("connect through the proxy")
}

#[tokio::test]
async fn simple_and_extended_queries_return_rows() {
    let client = client().await;
    let rows = client
        .simple_query("SELECT 1 AS a, 'x' AS b; SELECT generate_series(1, 3)")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "1", "2", "3"]);

    let row = client
        .query_one("SELECT $1::int + 1, $2::text || '!'", &[&41i32, &"hi"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
}

#[tokio::test]
async fn prepared_statement_is_reused_across_executions() {
    let client = client().await;
    let stmt = client.prepare("SELECT $1::bigint * 2").await.unwrap();
    for i in 0..50i64 {
        let row = client.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), i * 2);
    }
}

#[tokio::test]
async fn pipelined_queries_all_answer_in_order() {
    let client = client().await;
    let stmt = client.prepare("SELECT $1::int").await.unwrap();
    let futures: Vec<_> = (0..200i32)
        .map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move {
                client
                    .query_one(stmt, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        })
        .collect();
    let results = futures::future::try_join_all(futures).await.unwrap();
    assert_eq!(results, (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn binary_float4_array_and_pgvector_round_trip() {
    let client = client().await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS clients_vec (id int, arr real[], emb vector(3))")
        .await
        .unwrap();
    let arr = vec![0.5f32, -1.25, 3.0];
    let emb = Vector::from(vec![1.0f32, 2.0, 3.5]);
    client
        .execute("INSERT INTO clients_vec VALUES (1, $1, $2)", &[&arr, &emb])
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT arr, emb, emb <-> '[1,2,3]'::vector FROM clients_vec WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<f32>>(0), arr);
    assert_eq!(row.get::<_, Vector>(1).to_vec(), vec![1.0, 2.0, 3.5]);
    assert!((row.get::<_, f64>(2) - 0.5).abs() < 1e-6);
}

#[tokio::test]
async fn copy_in_then_copy_out_returns_the_same_rows() {
    let client = client().await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS clients_copy (id int, body text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tline {i} with some text\n"));
    }
    let sink = client
        .copy_in("COPY clients_copy FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 5000);

    let out = client
        .copy_out("COPY (SELECT id, body FROM clients_copy ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let copied: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(copied).unwrap(), data);
}

#[tokio::test]
async fn notify_reaches_the_listening_connection_with_the_sender_pid() {
    let (listener, mut connection) = tokio_postgres::connect(&stack().url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(Ok(msg)) = stream.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n);
            }
        }
    });
    listener.batch_execute("LISTEN proxy_chan").await.unwrap();

    let sender = client().await;
    let sender_pid: i32 = sender
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    sender
        .batch_execute("NOTIFY proxy_chan, 'hello through the proxy'")
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("notification in time")
        .expect("notification");
    assert_eq!(note.channel(), "proxy_chan");
    assert_eq!(note.payload(), "hello through the proxy");
    // BackendKeyData passes through unchanged, so pids agree end to end.
    assert_eq!(note.process_id(), sender_pid);
}

#[tokio::test]
async fn cancel_request_reaches_upstream_and_stops_pg_sleep() {
    let client = client().await;
    // BackendKeyData passes through: the proxy's session has the upstream backend's pid.
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let token = client.cancel_token();
    // The cancel goes once the backend runs the sleep (a cancel that arrives before the query
    // would be lost, and the test would wait out the 30 s).
    let canceller = tokio::spawn(async move {
        let admin = connect(&stack().direct_url()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running: bool = admin
                .query_one(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 \
                       AND state = 'active' AND query LIKE '%pg_sleep(30)%')",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            if running {
                break;
            }
            assert!(Instant::now() < deadline, "the sleep never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client
        .batch_execute("SELECT pg_sleep(30)")
        .await
        .expect_err("the sleep must be cancelled");
    canceller.await.unwrap().unwrap();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    let row = client.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn errors_keep_their_sqlstate_and_leave_the_connection_usable() {
    let client = client().await;
    let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .query("SELECT * FROM no_such_table_here", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    let row = client.query_one("SELECT 'still here'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "still here");

    client.batch_execute("BEGIN").await.unwrap();
    assert!(client.batch_execute("SELECT 1/0").await.is_err());
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}

/// The embedded Postgres is reached over its Unix socket (no server address), while psql and
/// other tools still reach it over TCP; `--upstream` with a socket directory as host does the same.
#[tokio::test]
async fn upstreams_are_reached_over_unix_sockets() {
    let server_addr = "SELECT coalesce(host(inet_server_addr()), 'unix socket')";
    let proxied = connect(&stack().url()).await.unwrap();
    let via: String = proxied.query_one(server_addr, &[]).await.unwrap().get(0);
    assert_eq!(via, "unix socket");
    let direct = connect(&stack().direct_url()).await.unwrap();
    let via: String = direct.query_one(server_addr, &[]).await.unwrap().get(0);
    assert_eq!(via, "127.0.0.1");

    let socket_dir = scratch_dir().join("pgdata");
    let host = socket_dir.to_str().unwrap().replace('/', "%2F");
    let port = stack().pg_port.unwrap();
    let proxy = Proxy::spawn(
        "socket-upstream",
        &["--upstream", &format!("postgres://{host}:{port}")],
    );
    let client = connect(&proxy.url()).await.unwrap();
    let via: String = client.query_one(server_addr, &[]).await.unwrap().get(0);
    assert_eq!(via, "unix socket");
}

/// Messages far larger than the relay's queues (a 300 MB DataRow, 300 MB CopyData out, 200 MB
/// CopyData in) pass through intact while the proxy's own memory stays far below their size.
#[tokio::test]
async fn huge_single_messages_are_streamed_not_buffered() {
    const OUT: usize = 300_000_000;
    const IN: usize = 200_000_000;
    let proxy = Proxy::spawn("huge-messages", &["--upstream", &stack().direct_url()]);
    let client = connect(&proxy.url()).await.unwrap();
    let before = proxy.peak_rss();

    let row = client
        .query_one(&format!("SELECT repeat('ab', {}) AS t", OUT / 2), &[])
        .await
        .unwrap();
    let text: &str = row.get(0);
    assert_eq!(text.len(), OUT);
    assert!(text.starts_with("abab") && text.ends_with("abab"));
    drop(row);

    let out = client
        .copy_out(&format!("COPY (SELECT repeat('z', {OUT})) TO STDOUT"))
        .await
        .unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let copied: usize = chunks.iter().map(Bytes::len).sum();
    assert_eq!(copied, OUT + 1, "the row and its newline");
    drop(chunks);

    client
        .batch_execute("DROP TABLE IF EXISTS huge_in; CREATE TABLE huge_in (t text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY huge_in (t) FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    let mut line = vec![b'q'; IN];
    line.push(b'\n');
    sink.send(Bytes::from(line)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let stored: i32 = client
        .query_one("SELECT length(t) FROM huge_in", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, IN);
    client.batch_execute("DROP TABLE huge_in").await.unwrap();

    let peak = proxy.peak_rss();
    eprintln!("proxy peak RSS: {before} bytes before, {peak} after");
    assert!(
        peak < before + 64 * 1024 * 1024,
        "proxy peak RSS grew from {before} to {peak} bytes relaying {OUT}-byte messages"
    );
}

#[tokio::test]
async fn large_results_stream_through() {
    let client = client().await;
    let row = client
        .query_one("SELECT repeat('x', 20000000)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0).len(), 20_000_000);
    let rows = client
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows[99_999].get::<_, i32>(0), 100_000);
}
