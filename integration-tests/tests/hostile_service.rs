//! Hostile use of the upcall service: many spellings of one database must not multiply the
//! proxy's service connections, their number is bounded (53300 beyond it, the others keep
//! working), and a NOTICE a client raises with the upcall marker is the client's own: it
//! neither cancels the session's statements nor is answered. Through the release binary
//! against the embedded Postgres.

use std::time::{Duration, Instant};

use pgml_integration_tests::{connect, spawn_embedded, stack, Proxy, DEFAULT_MODEL};
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const SERVICE: &str = "pgml-proxy upcall service";

/// Service backends connected to `database`, as Postgres sees them.
async fn service_backends(admin: &Client, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity \
              WHERE application_name = $1 AND datname::text = $2",
            &[&SERVICE, &database],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Waits up to 15 s for `database` to have exactly `want` service backends; the last count.
async fn settle(admin: &Client, database: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = service_backends(admin, database).await;
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn through(proxy: &Proxy, database: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname={database}",
        proxy.port
    )
}

fn upcall(text: &str) -> String {
    format!("DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', '{text}'); END $$")
}

#[tokio::test]
async fn thirty_spellings_of_one_long_database_name_share_one_service_connection() {
    let admin = connect(&stack().direct_url()).await.expect("direct");
    // 63 bytes: what Postgres keeps of any longer name that starts with them.
    let database = format!("hostile_service_{}", "l".repeat(47));
    assert_eq!(database.len(), 63);
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{database}\""),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .expect("the long-named database");
    }
    let mut sessions = Vec::new();
    for i in 0..30 {
        let spelling = format!("{database}_spelling_{i:02}");
        let client = connect(&through(stack(), &spelling))
            .await
            .unwrap_or_else(|e| panic!("session to {spelling}: {e}"));
        let current: String = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(current, database, "Postgres truncates the name");
        client
            .batch_execute(&upcall(&format!("spelling {i}")))
            .await
            .unwrap_or_else(|e| panic!("upcall from {spelling}: {e:?}"));
        sessions.push(client);
    }
    // Every session is still open; the proxy holds one service backend for their database.
    assert_eq!(settle(&admin, &database, 1).await, 1);
    for (i, client) in sessions.iter().enumerate() {
        client
            .batch_execute(&upcall(&format!("again {i}")))
            .await
            .expect("a second upcall");
    }
    assert_eq!(service_backends(&admin, &database).await, 1);
}

/// A proxy with its own embedded Postgres and at most `max` service connections.
fn bounded_proxy(max: usize) -> Proxy {
    spawn_embedded(
        "service-bound",
        &format!("pgdata-bound-{max}"),
        &["--service-connections-max", &max.to_string()],
    )
}

#[tokio::test]
async fn over_the_bound_a_third_database_fails_with_53300_and_the_first_two_keep_working() {
    let proxy = bounded_proxy(2);
    let admin = connect(&proxy.direct_url()).await.expect("direct");
    let databases = ["bound_a", "bound_b", "bound_c"];
    for database in databases {
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("a database");
    }
    let a = connect(&through(&proxy, "bound_a")).await.unwrap();
    let b = connect(&through(&proxy, "bound_b")).await.unwrap();
    let c = connect(&through(&proxy, "bound_c")).await.unwrap();
    a.batch_execute(&upcall("a")).await.expect("upcall in a");
    b.batch_execute(&upcall("b")).await.expect("upcall in b");

    let err = c
        .batch_execute(&upcall("c"))
        .await
        .expect_err("a third database is over the bound");
    let db: &DbError = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(
        db.message().contains("--service-connections-max 2"),
        "{db:?}"
    );
    // The session goes on; so do the first two databases', and new sessions to them.
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    a.batch_execute(&upcall("a again")).await.expect("a again");
    b.batch_execute(&upcall("b again")).await.expect("b again");
    let a2 = connect(&through(&proxy, "bound_a")).await.unwrap();
    a2.batch_execute(&upcall("a2"))
        .await
        .expect("a new session");
    assert_eq!(settle(&admin, "bound_a", 1).await, 1);
    assert_eq!(settle(&admin, "bound_b", 1).await, 1);
    assert_eq!(service_backends(&admin, "bound_c").await, 0);
}

#[tokio::test]
async fn sixteen_first_upcalls_at_once_share_the_one_connection_being_opened() {
    // A fresh proxy (no service connection yet) bounded to 3: each of 16 sessions' first upcall
    // opening its own connection would find the bound full (53300).
    let proxy = bounded_proxy(3);
    let admin = connect(&proxy.direct_url()).await.expect("direct");
    let mut sessions = Vec::new();
    for _ in 0..16 {
        sessions.push(connect(&through(&proxy, "postgres")).await.unwrap());
    }
    let calls = sessions.iter().enumerate().map(|(i, session)| async move {
        session.batch_execute(&upcall(&format!("first {i}"))).await
    });
    let results = futures::future::join_all(calls).await;
    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "session {i}: {result:?}");
    }
    assert_eq!(
        settle(&admin, "postgres", 1).await,
        1,
        "one service connection"
    );
}

/// Connects through the stack, collecting the NOTICEs the client receives.
async fn connect_noticed(config: &str) -> (Client, tokio::sync::mpsc::UnboundedReceiver<DbError>) {
    let (client, mut connection) = tokio_postgres::connect(config, NoTls)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = tx.send(notice);
            }
        }
    });
    (client, rx)
}

#[tokio::test]
async fn a_notice_imitating_an_upcall_neither_cancels_the_session_nor_is_answered() {
    let (client, mut notices) = connect_noticed(&stack().config_for("postgres", "postgres")).await;
    // A forged request the proxy cannot answer (its id is no uuid): answered, it would cancel
    // the statement that raised it, and with it the real upcall that follows.
    let forged = "pgml-proxy:upcall:------------------------------------";
    let detail = r#"{"function":"embed","model":"m","inputs":["x"],"kwargs":{}}"#;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN \
               RAISE NOTICE USING MESSAGE = '{forged}', DETAIL = '{detail}'; \
               PERFORM pgml.embed('{DEFAULT_MODEL}', 'after a forged notice'); \
               PERFORM pg_catalog.pg_sleep(0.5); \
             END $$"
        ))
        .await
        .expect("the statement is not cancelled by a forged upcall");
    // The same from a function named like the shim's, in a schema of the client's.
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS xpgml_proxy CASCADE; CREATE SCHEMA xpgml_proxy; \
             CREATE FUNCTION xpgml_proxy.upcall_call(fn text, model text, inputs text[], kwargs jsonb, query text) \
             RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$ BEGIN \
               RAISE NOTICE USING MESSAGE = '{forged}', DETAIL = '{detail}'; END $f$; \
             DO $$ BEGIN \
               PERFORM xpgml_proxy.upcall_call('embed', 'm', ARRAY['x'], '{{}}', NULL); \
               PERFORM pgml.embed('{DEFAULT_MODEL}', 'after a forged notice'); \
               PERFORM pg_catalog.pg_sleep(0.5); \
             END $$"
        ))
        .await
        .expect("the statement is not cancelled by a forged upcall");
    // The client's own NOTICEs reach it unchanged; the proxy warned about nothing.
    let mut seen = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        seen.push((notice.severity().to_owned(), notice.message().to_owned()));
    }
    let forged_seen = seen.iter().filter(|(_, m)| m == forged).count();
    assert_eq!(forged_seen, 2, "{seen:?}");
    assert!(seen.iter().all(|(s, _)| s != "WARNING"), "{seen:?}");
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}
