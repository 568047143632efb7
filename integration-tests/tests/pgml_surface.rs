//! PostgresML's SQL surface beyond pgml.embed, through the proxy: pgml.chunk (LangChain's
//! splitters, equal to the pgml-chunk crate, which is golden-tested against LangChain) on the
//! constant, column and server-side paths, with PostgresML's errors; pgml.version();
//! pgml.transform without a model route (42704) or with a pipeline other than text generation
//! and chat (0A000); the catalog korvus needs (pgml.projects, pgml.models and
//! their enums) and what an ordinary role may do with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgml_integration_tests::{connect, stack};
use serde_json::json;

async fn client() -> tokio_postgres::Client {
    connect(&stack().url()).await.expect("connect")
}

const DOC: &str = "PostgresML users chunk long documents before embedding them.\n\n\
    Each chunk becomes one row. The splitter tries paragraphs first, then lines, then words, \
    and only cuts inside a word when nothing else fits.\n\nShort tail.";

fn expected(splitter: &str, text: &str, kwargs: serde_json::Value) -> Vec<(i64, String)> {
    pgml_chunk::chunk(splitter, text, &kwargs)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (i as i64 + 1, c))
        .collect()
}

#[tokio::test]
async fn chunk_answers_like_langchain_on_every_path() {
    let client = client().await;
    let kwargs = json!({"chunk_size": 60, "chunk_overlap": 10});
    let want = expected("recursive_character", DOC, kwargs.clone());
    assert!(want.len() > 2, "the document splits: {want:?}");

    // Constant arguments, FROM position.
    let rows = client
        .query(
            "SELECT chunk_index, chunk FROM pgml.chunk('recursive_character', $1, $2::text::jsonb)",
            &[&DOC, &kwargs.to_string()],
        )
        .await
        .expect("pgml.chunk in FROM");
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, want);

    // Column arguments (korvus's shape: the composite in a select list over a table).
    client
        .batch_execute(
            "DROP TABLE IF EXISTS ps_docs; CREATE TABLE ps_docs (id int, document jsonb)",
        )
        .await
        .unwrap();
    let docs = [
        DOC,
        "one short document",
        "markdown\n# Title\n\nbody text here",
    ];
    for (i, d) in docs.iter().enumerate() {
        client
            .execute(
                "INSERT INTO ps_docs VALUES ($1, jsonb_build_object('text', $2::text))",
                &[&(i as i32), d],
            )
            .await
            .unwrap();
    }
    let rows = client
        .query(
            "WITH splitter AS (SELECT 'recursive_character'::text AS name, $1::text::jsonb AS parameters) \
             SELECT id, (chunk_t).chunk_index, (chunk_t).chunk FROM ( \
               SELECT id, pgml.chunk((SELECT name FROM splitter), document->>'text', (SELECT parameters FROM splitter)) AS chunk_t \
               FROM ps_docs) c ORDER BY id, 2",
            &[&kwargs.to_string()],
        )
        .await
        .expect("pgml.chunk over a table");
    let mut want_all = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        for (n, c) in expected("recursive_character", d, kwargs.clone()) {
            want_all.push((i as i32, n, c));
        }
    }
    let got: Vec<(i32, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, want_all);

    // Server-side: a PL/pgSQL loop.
    let row = client
        .query_one(
            "DO $$ DECLARE n bigint; BEGIN \
               SELECT count(*) INTO n FROM pgml.chunk('markdown', E'# A\\n\\ntext\\n\\n## B\\n\\nmore', '{\"chunk_size\": 10, \"chunk_overlap\": 0}'); \
               PERFORM set_config('ps.n', n::text, false); END $$; \
             SELECT current_setting('ps.n')::bigint",
            &[],
        )
        .await;
    // (A DO block and a SELECT in one prepared statement is not allowed: run them apart.)
    assert!(row.is_err());
    client
        .batch_execute(
            "DO $$ DECLARE n bigint; BEGIN \
               SELECT count(*) INTO n FROM pgml.chunk('markdown', E'# A\\n\\ntext\\n\\n## B\\n\\nmore', '{\"chunk_size\": 10, \"chunk_overlap\": 0}'); \
               PERFORM set_config('ps.n', n::text, false); END $$",
        )
        .await
        .expect("pgml.chunk in a DO block");
    let n: String = client
        .query_one("SELECT current_setting('ps.n')", &[])
        .await
        .unwrap()
        .get(0);
    let want = expected(
        "markdown",
        "# A\n\ntext\n\n## B\n\nmore",
        json!({"chunk_size": 10, "chunk_overlap": 0}),
    );
    assert_eq!(n, want.len().to_string());
}

#[tokio::test]
async fn chunk_errors_carry_postgresml_meaning_and_the_session_goes_on() {
    let client = client().await;
    for (sql, state, needle) in [
        (
            "SELECT * FROM pgml.chunk('no_such_splitter', 'x')",
            "22023",
            "no_such_splitter",
        ),
        ("SELECT * FROM pgml.chunk('nltk', 'x')", "0A000", "recursive_character"),
        (
            "SELECT * FROM pgml.chunk('character', 'x', '{\"chunk_size\": 10, \"chunk_overlap\": 20}')",
            "22023",
            "overlap",
        ),
        (
            "SELECT * FROM pgml.chunk('character', 'x', '{\"no_such_kwarg\": 1}')",
            "22023",
            "no_such_kwarg",
        ),
    ] {
        let err = client.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), state, "{sql}: {}", db.message());
        assert!(db.message().contains(needle), "{sql}: {}", db.message());
    }
    // A hostile overlap (output ~300 times the text) is refused, not built in the proxy.
    let err = client
        .simple_query(
            "SELECT count(*) FROM pgml.chunk('character', repeat('ab ', 400000), \
             '{\"chunk_size\": 1000, \"chunk_overlap\": 999, \"separator\": \" \"}')",
        )
        .await
        .expect_err("output over the limit");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "54000", "{}", db.message());
    assert!(
        stack().peak_rss() < 1 << 30,
        "the proxy did not build the chunks: peak RSS {} bytes",
        stack().peak_rss()
    );
    // NULL arguments: STRICT, no rows.
    let rows = client
        .query("SELECT * FROM pgml.chunk('character', NULL)", &[])
        .await
        .unwrap();
    assert!(rows.is_empty());
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn version_transform_and_the_korvus_catalog() {
    let client = client().await;
    let version: String = client
        .query_one("SELECT pgml.version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("2.10.0+pgml-proxy"), "{version}");

    // This proxy has no --remote-model: text generation has nowhere to go (42704, naming the
    // flag); other pipelines are not routed at all (0A000, naming the task).
    for (sql, code, says) in [
        (
            "SELECT pgml.transform('text-generation', inputs => ARRAY['hi'])",
            "42704",
            "--remote-model",
        ),
        (
            "SELECT pgml.transform('{\"task\": \"text-generation\", \"model\": \"acme/llm\"}'::jsonb, inputs => ARRAY['hi'])",
            "42704",
            "\"acme/llm\"",
        ),
        (
            "SELECT pgml.transform('{\"task\": \"text-classification\"}'::jsonb, inputs => ARRAY['hi'])",
            "0A000",
            "\"text-classification\"",
        ),
        (
            "SELECT * FROM pgml.transform_stream('text-generation', input => 'hi')",
            "42704",
            "--remote-model",
        ),
    ] {
        let err = client.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        assert!(db.message().contains(says), "{sql}: {}", db.message());
    }

    // The catalog korvus writes, as an ordinary role: insert a project, a model; no deletes.
    client
        .batch_execute("DROP ROLE IF EXISTS ps_app; CREATE ROLE ps_app LOGIN PASSWORD 'ps_app'")
        .await
        .unwrap();
    let app = connect(&stack().config_for("ps_app", "ps_app"))
        .await
        .unwrap();
    let id: i64 = app
        .query_one(
            "INSERT INTO pgml.projects (name, task) VALUES ('ps_collection', 'embedding') \
             ON CONFLICT (name) DO UPDATE SET task = EXCLUDED.task RETURNING id",
            &[],
        )
        .await
        .expect("an ordinary role registers a project")
        .get(0);
    app.execute(
        "INSERT INTO pgml.models (project_id, num_features, algorithm, runtime, hyperparams, status, search_params, search_args) \
         VALUES ($1, 1, 'transformers', 'python', '{}', 'successful', '{}', '{}')",
        &[&id],
    )
    .await
    .expect("an ordinary role registers a model");
    let err = app
        .execute("DELETE FROM pgml.projects", &[])
        .await
        .expect_err("no deletes");
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    let labels: Vec<String> = client
        .query("SELECT unnest(enum_range(NULL::pgml.task))::text", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        labels.contains(&"embedding".to_owned()) && labels.len() == 13,
        "{labels:?}"
    );
}

/// The cross-encoder `make setup` lays into the hub cache (see scripts/lay_reranker.py).
const RERANKER: &str = "aegis/policy-nli-cross-encoder";

#[tokio::test]
async fn rank_orders_documents_and_honours_top_k_and_return_documents() {
    let client = client().await;
    let docs = vec![
        "Bananas are a good source of potassium.".to_owned(),
        "Paris is the capital and largest city of France.".to_owned(),
        "The French capital hosts the Louvre museum.".to_owned(),
    ];
    let rows = client
        .query(
            "SELECT corpus_id, score, text FROM pgml.rank($1, 'What is the capital of France?', $2, '{\"return_documents\": true}')",
            &[&RERANKER, &docs],
        )
        .await
        .expect("pgml.rank");
    assert_eq!(rows.len(), docs.len());
    let ranked: Vec<(i64, f64, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for pair in ranked.windows(2) {
        assert!(pair[0].1 >= pair[1].1, "best first: {ranked:?}");
    }
    for (id, score, text) in &ranked {
        assert!((0.0..=1.0).contains(score), "sigmoid scores: {ranked:?}");
        assert_eq!(text.as_deref(), Some(docs[*id as usize].as_str()));
    }
    assert_ne!(
        ranked[0].0, 0,
        "the bananas are not the best answer: {ranked:?}"
    );

    // korvus's call: top_k and no documents (text NULL), corpus_id 0-based.
    let rows = client
        .query(
            "SELECT corpus_id, text FROM pgml.rank($1, 'capital of France', $2, '{\"return_documents\": false, \"top_k\": 2}'::jsonb || '{}'::jsonb)",
            &[&RERANKER, &docs],
        )
        .await
        .expect("pgml.rank with top_k");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.get::<_, Option<String>>(1).is_none()));
    let first: i64 = rows[0].get(0);
    assert_eq!(first, ranked[0].0, "the same order with top_k");

    // An embedding model is not a cross-encoder; bad kwargs are 22023.
    let err = client
        .simple_query(
            "SELECT * FROM pgml.rank('sentence-transformers/all-MiniLM-L6-v2', 'q', ARRAY['d'])",
        )
        .await
        .expect_err("wrong model kind");
    assert_eq!(err.as_db_error().unwrap().code().code(), "42809");
    let err = client
        .simple_query(&format!(
            "SELECT * FROM pgml.rank('{RERANKER}', 'q', ARRAY['d'], '{{\"top_k\": \"x\"}}')"
        ))
        .await
        .expect_err("bad kwargs");
    assert_eq!(err.as_db_error().unwrap().code().code(), "22023");
}
