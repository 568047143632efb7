//! Row-dependent pgml.embed calls in the extended protocol are prefetched in one batch per
//! Bind, like simple queries: Spring AI's batch statement with a text[] parameter, korvus's
//! INSERT ... SELECT and array_agg forms, inside transactions (the prefetch sees the
//! transaction's own rows), and psql's `\bind` (Parse, Bind, Describe, Execute and Sync in one
//! batch). Nothing in this binary may use the upcall path: each test checks that the proxy
//! answered no upcall, so a statement that silently fell back to it fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgml_integration_tests::{
    connect, engine_embed, max_abs_diff, parse_real_array, psql_script, scratch_dir, stack, Jsonb,
    DEFAULT_MODEL,
};
use tokio_postgres::types::Type;

async fn client() -> tokio_postgres::Client {
    connect(&stack().url()).await.expect("connect")
}

fn texts(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{tag} review {i}: the {} was {}",
                ["soup", "hotel", "film"][i % 3],
                ["great", "awful"][i % 2]
            )
        })
        .collect()
}

fn no_upcalls() {
    assert_eq!(
        stack().metric("pgml_proxy_upcalls_total"),
        0.0,
        "a statement was served by the upcall path instead of the prefetch"
    );
}

fn assert_vectors(what: &str, got: &[Vec<f32>], inputs: &[String]) {
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let want = engine_embed(DEFAULT_MODEL, "{}", &refs);
    assert_eq!(got.len(), want.len(), "{what}: one vector per input");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let diff = max_abs_diff(g, w);
        assert!(
            diff <= 1e-6,
            "{what}: row {i} differs from the engine by {diff}"
        );
    }
}

/// Spring AI's `PostgresMlEmbeddingModel` batch statement, as pgjdbc sends it (`?` become `$n`),
/// with and without the `::vector` cast; prepared once and executed several times.
#[tokio::test]
async fn spring_ai_batch_statement_is_prefetched_per_bind() {
    let client = client().await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .await
        .unwrap();
    for (sql, cast) in [
        (
            "SELECT pgml.embed($1, text, $2::JSONB) AS embedding FROM (SELECT unnest($3) AS text) AS texts",
            false,
        ),
        (
            "SELECT pgml.embed($1, text, $2::JSONB)::vector AS embedding FROM (SELECT unnest($3) AS text) AS texts",
            true,
        ),
    ] {
        // pgjdbc declares setString as varchar and a createArrayOf("text", ...) as text[].
        let stmt = client
            .prepare_typed(sql, &[Type::VARCHAR, Type::VARCHAR, Type::TEXT_ARRAY])
            .await
            .expect("prepare");
        for round in 0..3 {
            let inputs = texts(25 + round, &format!("spring cast={cast} round={round}"));
            let rows = client
                .query(&stmt, &[&DEFAULT_MODEL, &"{}", &inputs])
                .await
                .expect("execute");
            let got: Vec<Vec<f32>> = rows
                .iter()
                .map(|r| {
                    if cast {
                        let v: pgvector::Vector = r.get(0);
                        v.to_vec()
                    } else {
                        r.get(0)
                    }
                })
                .collect();
            assert_vectors(sql, &got, &inputs);
        }
    }
    no_upcalls();
}

/// korvus's shapes: INSERT ... SELECT with named arguments and parameters, and the
/// set-returning `inputs => array_agg(...)` form, inside a transaction whose own rows the
/// prefetch must see.
#[tokio::test]
async fn korvus_insert_select_and_array_agg_forms_see_their_transaction() {
    let mut client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS kp_chunks, kp_embeddings; \
             CREATE TABLE kp_chunks (id serial PRIMARY KEY, document_id int, chunk text); \
             CREATE TABLE kp_embeddings (chunk_id int, embedding real[])",
        )
        .await
        .unwrap();
    let inputs = texts(30, "korvus");
    let tx = client.transaction().await.unwrap();
    for (i, t) in inputs.iter().enumerate() {
        tx.execute(
            "INSERT INTO kp_chunks (document_id, chunk) VALUES ($1, $2)",
            &[&((i % 3) as i32), t],
        )
        .await
        .unwrap();
    }
    let inserted = tx
        .execute(
            "INSERT INTO kp_embeddings (chunk_id, embedding) \
             SELECT id, pgml.embed(text => chunk, transformer => $1, kwargs => $2) \
             FROM kp_chunks WHERE document_id = ANY($3)",
            &[&DEFAULT_MODEL, &Jsonb("{}"), &vec![0i32, 1, 2]],
        )
        .await
        .expect("korvus INSERT ... SELECT");
    assert_eq!(inserted, inputs.len() as u64);
    let rows = tx
        .query(
            "SELECT e.embedding FROM kp_embeddings e JOIN kp_chunks c ON c.id = e.chunk_id ORDER BY c.id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<Vec<f32>> = rows.iter().map(|r| r.get(0)).collect();
    assert_vectors("INSERT ... SELECT", &got, &inputs);

    let rows = tx
        .query(
            "SELECT unnest(array_agg(id)) AS id, \
                    pgml.embed(inputs => array_agg(chunk), transformer => $1, kwargs => $2) AS embedding \
             FROM kp_chunks WHERE document_id = ANY($3)",
            &[&DEFAULT_MODEL, &Jsonb("{}"), &vec![1i32]],
        )
        .await
        .expect("korvus array_agg form");
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let got: Vec<Vec<f32>> = rows.iter().map(|r| r.get(1)).collect();
    let want_inputs: Vec<String> = ids
        .iter()
        .map(|&id| inputs[(id - 1) as usize].clone())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_vectors("array_agg", &got, &want_inputs);
    tx.rollback().await.unwrap();
    no_upcalls();
}

/// psql's `\bind` sends Parse, Bind, Describe, Execute and Sync in one batch: the proxy ends
/// the batch early (invisibly) to prefetch. A Parse that fails there is reported once and the
/// rest of that batch skipped, as Postgres does; the session stays in step.
#[test]
fn psql_bind_pipelines_are_prefetched_and_failed_parses_skip_their_batch() {
    let inputs = texts(12, "psql");
    let mut script =
        String::from("DROP TABLE IF EXISTS pb_docs; CREATE TABLE pb_docs (id int, body text);\n");
    for (i, t) in inputs.iter().enumerate() {
        script.push_str(&format!("INSERT INTO pb_docs VALUES ({i}, '{t}');\n"));
    }
    script.push_str(&format!(
        "SELECT pgml.embed($1, body) FROM pb_docs ORDER BY id \\bind '{DEFAULT_MODEL}' \\g\n\
         SELECT pgml.embed($1, body) FROM pb_no_such_table \\bind '{DEFAULT_MODEL}' \\g\n\
         SELECT 'still in step', count(pgml.embed($1, body)) FROM pb_docs \\bind '{DEFAULT_MODEL}' \\g\n"
    ));
    let (_, out, err) = psql_script(&stack().url(), &scratch_dir().join("psql_bind"), &script);
    eprintln!("psql out:\n{out}\npsql err:\n{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    let got: Vec<Vec<f32>> = lines.iter().map(|l| parse_real_array(l)).collect();
    assert_vectors("psql \\bind", &got, &inputs);
    assert_eq!(
        err.matches("ERROR").count(),
        1,
        "exactly the missing table's error: {err}"
    );
    assert!(err.contains("pb_no_such_table"), "{err}");
    assert!(out.contains("still in step|12"), "{out}\n{err}");
    no_upcalls();
}
