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

/// korvus's chunk statement (GENERATE_CHUNKS_FOR_DOCUMENT_IDS_WITH_SPLITTER: splitter name and
/// kwargs from subqueries on a splitters table, `pgml.chunk(...)` as a composite in a CTE, a
/// DELETE in another CTE, INSERT ... ON CONFLICT ... RETURNING) inside a transaction whose own
/// documents it chunks, then its resync form: every chunk equals the chunk crate's, and the
/// proxy chunked them in one prefetch per execution (no upcall).
#[tokio::test]
async fn korvus_chunk_statement_is_prefetched() {
    let mut client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS kc_splitters, kc_documents, kc_chunks; \
             CREATE TABLE kc_splitters (id bigserial PRIMARY KEY, name text, parameters jsonb); \
             CREATE TABLE kc_documents (id bigserial PRIMARY KEY, document jsonb); \
             CREATE TABLE kc_chunks (id bigserial PRIMARY KEY, document_id bigint, chunk_index bigint, chunk text, \
                                     UNIQUE (document_id, chunk_index)); \
             INSERT INTO kc_splitters (name, parameters) \
                 VALUES ('recursive_character', '{\"chunk_size\": 60, \"chunk_overlap\": 10}')",
        )
        .await
        .unwrap();
    let statement = |with_ids: bool| {
        format!(
            "WITH splitter AS (SELECT name, parameters FROM kc_splitters WHERE id = $1), \
             new AS (SELECT documents.id AS document_id, \
                            pgml.chunk ((SELECT name FROM splitter), document->>'text', (SELECT parameters FROM splitter)) AS chunk_t \
                     FROM kc_documents AS documents {}), \
             del AS (DELETE FROM kc_chunks chunks \
                     WHERE chunk_index > (SELECT MAX((chunk_t).chunk_index) FROM new \
                                          WHERE new.document_id = chunks.document_id GROUP BY new.document_id) \
                       AND chunks.document_id = ANY (SELECT document_id FROM new)) \
             INSERT INTO kc_chunks (document_id, chunk_index, chunk) \
             SELECT new.document_id, (chunk_t).chunk_index, (chunk_t).chunk FROM new \
             ON CONFLICT (document_id, chunk_index) DO UPDATE SET chunk = EXCLUDED.chunk {}",
            if with_ids { "WHERE id = ANY ($2)" } else { "" },
            if with_ids { "RETURNING id" } else { "" },
        )
    };
    let docs = texts(20, "chunked");
    let docs: Vec<String> = docs
        .iter()
        .map(|d| format!("{d}. {d}, and again: {d}"))
        .collect();
    let kwargs = serde_json::json!({"chunk_size": 60, "chunk_overlap": 10});
    let want = |doc: &str| pgml_chunk::chunk("recursive_character", doc, &kwargs).unwrap();

    let tx = client.transaction().await.unwrap();
    let mut ids = Vec::new();
    for d in &docs {
        let row = tx
            .query_one(
                "INSERT INTO kc_documents (document) VALUES (jsonb_build_object('text', $1::text)) RETURNING id",
                &[d],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    let stmt = tx
        .prepare_typed(&statement(true), &[Type::INT8, Type::INT8_ARRAY])
        .await
        .expect("prepare korvus's chunk statement");
    let returned = tx
        .query(&stmt, &[&1i64, &ids])
        .await
        .expect("chunk documents");
    let rows = tx
        .query(
            "SELECT document_id, chunk_index, chunk FROM kc_chunks ORDER BY document_id, chunk_index",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        returned.len(),
        rows.len(),
        "RETURNING id: one row per chunk"
    );
    let mut expected = Vec::new();
    for (id, d) in ids.iter().zip(&docs) {
        for (n, c) in want(d).into_iter().enumerate() {
            expected.push((*id, n as i64 + 1, c));
        }
    }
    assert!(expected.len() > docs.len(), "the documents split");
    let got: Vec<(i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, expected);
    tx.commit().await.unwrap();

    // The resync form (no document ids), unnamed statement, after the splitter changed.
    client
        .batch_execute(
            "UPDATE kc_splitters SET parameters = '{\"chunk_size\": 40, \"chunk_overlap\": 0}'",
        )
        .await
        .unwrap();
    client
        .execute(statement(false).as_str(), &[&1i64])
        .await
        .expect("resync");
    let kwargs = serde_json::json!({"chunk_size": 40, "chunk_overlap": 0});
    let count: i64 = client
        .query_one("SELECT count(*) FROM kc_chunks", &[])
        .await
        .unwrap()
        .get(0);
    let want_count: usize = docs
        .iter()
        .map(|d| {
            pgml_chunk::chunk("recursive_character", d, &kwargs)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(count as usize, want_count, "the DELETE CTE still ran");
    no_upcalls();
}

/// pgml.chunk with constant arguments (FROM position, simple protocol) and over a column in a
/// SELECT list (simple protocol): prefetched, equal to the chunk crate's output, no upcall.
#[test]
fn chunk_constant_and_column_calls_are_prefetched() {
    let text =
        "One sentence here. Another sentence there. A third one, somewhat longer than the others.";
    let script = format!(
        "SELECT chunk_index, chunk FROM pgml.chunk('recursive_character', '{text}', '{{\"chunk_size\": 30, \"chunk_overlap\": 5}}');\n\
         DROP TABLE IF EXISTS kc_simple; CREATE TABLE kc_simple (id int, body text);\n\
         INSERT INTO kc_simple VALUES (1, '{text}'), (2, 'short');\n\
         SELECT id, (c).chunk_index, (c).chunk FROM (SELECT id, pgml.chunk('character', body, '{{\"chunk_size\": 25, \"chunk_overlap\": 0, \"separator\": \" \"}}') AS c FROM kc_simple) s ORDER BY 1, 2;\n"
    );
    let (ok, out, err) = psql_script(
        &stack().url(),
        &scratch_dir().join("chunk_prefetch"),
        &script,
    );
    assert!(ok, "{err}");
    let mut want = String::new();
    let k1 = serde_json::json!({"chunk_size": 30, "chunk_overlap": 5});
    for (n, c) in pgml_chunk::chunk("recursive_character", text, &k1)
        .unwrap()
        .iter()
        .enumerate()
    {
        want.push_str(&format!("{}|{c}\n", n + 1));
    }
    let k2 = serde_json::json!({"chunk_size": 25, "chunk_overlap": 0, "separator": " "});
    for (id, body) in [(1, text), (2, "short")] {
        for (n, c) in pgml_chunk::chunk("character", body, &k2)
            .unwrap()
            .iter()
            .enumerate()
        {
            want.push_str(&format!("{id}|{}|{c}\n", n + 1));
        }
    }
    let got: String = out
        .lines()
        .filter(|l| l.contains('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, want);
    no_upcalls();
}

/// A data-modifying CTE beside a prefetched call is left out of the prefetch query: the proxy
/// never runs a client's INSERT or DELETE twice (a hostile or careless statement cannot make
/// its side effects happen once per prefetch), and its rows are still what Postgres returns.
#[tokio::test]
async fn a_modifying_cte_runs_once_when_its_neighbour_is_prefetched() {
    let client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS mc_docs, mc_log; \
             CREATE TABLE mc_docs (id int, body text); \
             CREATE TABLE mc_log (n int); \
             INSERT INTO mc_docs VALUES (1, 'modifying cte one'), (2, 'modifying cte two')",
        )
        .await
        .unwrap();
    let sql = "WITH ins AS (INSERT INTO mc_log VALUES (1) RETURNING n), \
               del AS (DELETE FROM mc_docs WHERE id = 99 RETURNING id), \
               e AS (SELECT id, pgml.embed($1, body) AS v FROM mc_docs) \
               SELECT id, v FROM e ORDER BY id";
    for round in 1..=2i64 {
        let rows = client
            .query(sql, &[&DEFAULT_MODEL])
            .await
            .expect("statement with modifying CTEs");
        let got: Vec<Vec<f32>> = rows.iter().map(|r| r.get(1)).collect();
        assert_vectors(
            "beside modifying CTEs",
            &got,
            &[
                "modifying cte one".to_owned(),
                "modifying cte two".to_owned(),
            ],
        );
        let logged: i64 = client
            .query_one("SELECT count(*) FROM mc_log", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            logged, round,
            "the INSERT CTE ran exactly once per execution"
        );
    }
    no_upcalls();
}
