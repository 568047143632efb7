//! pgml.chunk with hostile sizes, through the release proxy: a text that splits into millions
//! of one-character chunks must not multiply the proxy's memory (planned and upcall paths), a
//! text over the input limit gets 54000 (program_limit_exceeded), and the session and the proxy
//! go on answering ordinary calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgml_integration_tests::{connect, spawn_embedded, stack, Proxy};

/// 5 MiB of one character: with chunk_size 1, one chunk per byte (5,242,880 of them).
const TINY_CHUNKS: &str =
    "repeat('a', 5 * 1024 * 1024), '{\"chunk_size\": 1, \"chunk_overlap\": 0}'";

/// How much the proxy's peak memory may grow for one hostile call (it used to be ~570 MB).
const GROWTH_BOUND: u64 = 150 * 1024 * 1024;

/// A function around pgml.chunk: the proxy cannot plan the call inside it, so the shim upcalls
/// and the proxy writes the answer through its service connection.
const UPCALL_FUNCTION: &str =
    "CREATE OR REPLACE FUNCTION hc_count(t text, k jsonb) RETURNS bigint \
     LANGUAGE plpgsql AS $$ BEGIN \
       RETURN (SELECT count(*) FROM pgml.chunk('recursive_character', t, k)); \
     END $$";

/// An ordinary call on both paths gives the chunks the crate gives.
async fn ordinary_chunking_works(client: &tokio_postgres::Client) {
    let text = "one two three four five six seven eight nine ten";
    let kwargs = serde_json::json!({"chunk_size": 12, "chunk_overlap": 0});
    let want = pgml_chunk::chunk("recursive_character", text, &kwargs).unwrap();
    let rows = client
        .query(
            "SELECT chunk FROM pgml.chunk('recursive_character', $1, $2::text::jsonb) ORDER BY chunk_index",
            &[&text, &kwargs.to_string()],
        )
        .await
        .expect("an ordinary pgml.chunk call");
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, want);
    let n: i64 = client
        .query_one(
            "SELECT hc_count($1, $2::text::jsonb)",
            &[&text, &kwargs.to_string()],
        )
        .await
        .expect("an ordinary pgml.chunk call inside a function")
        .get(0);
    assert_eq!(n, want.len() as i64);
}

/// Runs `sql` (one bigint) and returns it, or asserts that it failed with 54000 and returns None.
async fn count_or_limit(client: &tokio_postgres::Client, sql: &str) -> Option<i64> {
    match client.query_one(sql, &[]).await {
        Ok(row) => Some(row.get(0)),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
            assert_eq!(db.code().code(), "54000", "{sql}: {}", db.message());
            None
        }
    }
}

fn grown_since(proxy: &Proxy, baseline: u64) -> u64 {
    proxy.peak_rss().saturating_sub(baseline)
}

#[tokio::test]
async fn millions_of_one_character_chunks_do_not_multiply_the_proxys_memory() {
    // A proxy of its own: its peak memory must not count the other tests' calls.
    let proxy = spawn_embedded("chunk-memory", "pgdata-chunk-memory", &[]);
    let client = connect(&proxy.url()).await.expect("connect");
    client.batch_execute(UPCALL_FUNCTION).await.unwrap();
    // Both paths once first, so that their lazy set-up (the shim's install, the service
    // connection) is in the baseline.
    ordinary_chunking_works(&client).await;
    let baseline = proxy.peak_rss();

    for (path, sql) in [
        (
            "planned",
            format!("SELECT count(*) FROM pgml.chunk('recursive_character', {TINY_CHUNKS})"),
        ),
        ("upcall", format!("SELECT hc_count({TINY_CHUNKS})")),
    ] {
        let counted = count_or_limit(&client, &sql).await;
        if let Some(n) = counted {
            assert_eq!(n, 5 * 1024 * 1024, "{path}: one chunk per byte");
        }
        // The batches staged for an answer that failed are removed before the error is
        // written, not left for the clean-up (staging ids: the version digit is b).
        let staged: i64 = client
            .query_one(
                "SELECT count(*) FROM pgml_proxy.upcall_answer \
                  WHERE request_id::text LIKE '________-____-b%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            staged, 0,
            "{path}: staged rows left in pgml_proxy.upcall_answer"
        );
        let grown = grown_since(&proxy, baseline);
        eprintln!(
            "{path}: {} MiB of peak memory growth ({})",
            grown >> 20,
            counted.map_or("54000".to_owned(), |n| format!("{n} chunks"))
        );
        assert!(
            grown < GROWTH_BOUND,
            "{path}: the proxy's peak memory grew by {} MiB for 5 MiB of text",
            grown >> 20
        );
        ordinary_chunking_works(&client).await;
    }

    // Under the limits, a million chunks are answered (written in bounded batches) on both
    // paths, within the bound.
    let million = "repeat('a', 1000000), '{\"chunk_size\": 1, \"chunk_overlap\": 0}'";
    for (path, sql) in [
        ("upcall", format!("SELECT hc_count({million})")),
        (
            "planned",
            format!("SELECT count(*) FROM pgml.chunk('recursive_character', {million})"),
        ),
    ] {
        let n = count_or_limit(&client, &sql)
            .await
            .expect("a million chunks are within the limits");
        assert_eq!(n, 1_000_000, "{path}");
        let grown = grown_since(&proxy, baseline);
        eprintln!(
            "{path}, a million chunks: {} MiB of peak memory growth",
            grown >> 20
        );
        assert!(grown < GROWTH_BOUND, "{path}: grew by {} MiB", grown >> 20);
        ordinary_chunking_works(&client).await;
    }
}

#[tokio::test]
async fn a_text_over_the_input_limit_gets_54000_and_the_session_goes_on() {
    let client = connect(&stack().url()).await.expect("connect");
    client.batch_execute(UPCALL_FUNCTION).await.unwrap();
    let big = "repeat('a', 20 * 1024 * 1024), '{}'";
    for sql in [
        format!("SELECT count(*) FROM pgml.chunk('recursive_character', {big})"),
        format!("SELECT hc_count({big})"),
    ] {
        let err = client.query_one(&sql, &[]).await.expect_err(&sql);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "54000", "{sql}: {}", db.message());
        assert!(
            db.message()
                .contains(&pgml_chunk::MAX_INPUT_BYTES.to_string()),
            "{sql}: the message names the limit: {}",
            db.message()
        );
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        ordinary_chunking_works(&client).await;
    }
}
