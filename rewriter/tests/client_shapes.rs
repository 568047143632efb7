//! The statements PostgresML's own clients send (Spring AI's batch embedding, korvus's
//! INSERT ... SELECT and array_agg forms, both with `$n` parameters) are planned as prefetch
//! statements, so the proxy serves them in one engine batch per execution.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgml_rewriter::{plan_statement, CallFunction, PassThroughReason, StatementPlan};

#[test]
fn spring_ai_and_korvus_statements_are_prefetched() {
    for sql in [
        "SELECT pgml.embed($1, text, $2::JSONB)::vector AS embedding FROM (SELECT unnest($3) AS text) AS texts",
        "SELECT pgml.embed($1, text, $2::JSONB) AS embedding FROM (SELECT unnest($3) AS text) AS texts",
        "INSERT INTO c.chunks_embeddings (chunk_id, embedding) SELECT id, pgml.embed(text => chunk, transformer => $1, kwargs => $2) FROM c.chunks WHERE document_id = ANY($3)",
        "SELECT unnest(array_agg(id)), pgml.embed(inputs => array_agg(chunk), transformer => $1, kwargs => $2) FROM c.chunks WHERE id = ANY ($3)",
    ] {
        match plan_statement(sql, &[25, 3802, 1009]) {
            StatementPlan::Prefetch(p) => {
                assert!(p.query.contains("$1") && p.query.contains("$2"), "{}", p.query);
            }
            other => panic!("expected a prefetch plan for {sql}, got {other:?}"),
        }
    }
}

/// korvus 1.1.5's GENERATE_CHUNKS_FOR_DOCUMENT_IDS_WITH_SPLITTER, verbatim but for the names.
const KORVUS_CHUNKS: &str = r#"WITH splitter AS (
    SELECT
        name,
        parameters
    FROM
        pgml.splitters
    WHERE
        id = $1
),
new AS (
    SELECT
        documents.id AS document_id,
        pgml.chunk ((
            SELECT
                name
            FROM splitter), document->>'text', (
            SELECT
                parameters
            FROM splitter)) AS chunk_t
FROM
    "c"."documents" AS documents
    WHERE
        id = ANY ($2)
),
del AS (
    DELETE FROM "c_p"."text_chunks" chunks
    WHERE chunk_index > (
            SELECT
                MAX((chunk_t).chunk_index)
            FROM
                new
            WHERE
                new.document_id = chunks.document_id
            GROUP BY
                new.document_id)
        AND chunks.document_id = ANY (
            SELECT
                document_id
            FROM
                new))
    INSERT INTO "c_p"."text_chunks" (document_id, chunk_index, chunk)
SELECT
    new.document_id,
    (chunk_t).chunk_index,
    (chunk_t).chunk
FROM
    new
    LEFT OUTER JOIN "c_p"."text_chunks" chunks ON chunks.document_id = new.document_id
    AND chunks.chunk_index = (chunk_t).chunk_index
WHERE (chunk_t).chunk <> COALESCE(chunks.chunk, '')
ON CONFLICT (document_id, chunk_index)
    DO UPDATE SET
        chunk = EXCLUDED.chunk
RETURNING
    id"#;

#[test]
fn korvus_chunk_statement_is_prefetched_without_its_delete() {
    let StatementPlan::Prefetch(p) = plan_statement(KORVUS_CHUNKS, &[20, 1016]) else {
        panic!("expected a prefetch plan")
    };
    assert_eq!(p.calls.len(), 1);
    assert_eq!(p.calls[0].function, CallFunction::Chunk);
    let q = &p.query;
    // The WITH list keeps `splitter` and `new`, never the DELETE.
    assert!(!q.to_ascii_lowercase().contains("delete"), "{q}");
    assert!(q.contains("WITH splitter AS ("), "{q}");
    assert!(q.contains("SELECT 'c', pgml_s.pgml_t1"), "{q}");
    assert!(
        q.contains("(document->>'text')::text AS pgml_i1") && q.contains("id = ANY ($2)"),
        "{q}"
    );
    // The resync form (GENERATE_CHUNKS_WITH_SPLITTER): no WHERE on the documents.
    let resync = KORVUS_CHUNKS
        .replace("    WHERE\n        id = ANY ($2)\n", "")
        .replace("RETURNING\n    id", "");
    assert!(matches!(
        plan_statement(&resync, &[20]),
        StatementPlan::Prefetch(_)
    ));
}

#[test]
fn chunk_calls_are_prefetched_never_spliced() {
    for sql in [
        "SELECT * FROM pgml.chunk('recursive_character', 'some text', '{\"chunk_size\": 10}')",
        "SELECT chunk_index, chunk FROM pgml.chunk(splitter => 'markdown', text => $1)",
        "SELECT id, pgml.chunk('character', body) FROM docs",
        "SELECT id, (pgml.chunk('character', body, kwargs => '{}')).chunk FROM docs WHERE id < 3",
    ] {
        match plan_statement(sql, &[25]) {
            StatementPlan::Prefetch(p) => {
                assert!(p.calls.iter().all(|c| c.function == CallFunction::Chunk));
                assert!(p.query.contains("'c'"), "{}", p.query);
            }
            other => panic!("expected a prefetch plan for {sql}, got {other:?}"),
        }
    }
    // Row-dependent in FROM: the upcall serves it.
    assert!(matches!(
        plan_statement(
            "SELECT c.* FROM docs, LATERAL pgml.chunk('character', docs.body) c",
            &[]
        ),
        StatementPlan::PassThrough {
            reason: PassThroughReason::UnsupportedPosition
        }
    ));
}

#[test]
fn a_modifying_cte_named_by_the_rest_of_the_statement_is_not_left_out() {
    for sql in [
        "WITH d AS (DELETE FROM t RETURNING body) SELECT pgml.embed('m', body) FROM d",
        "WITH d AS (DELETE FROM t RETURNING body), x AS (SELECT pgml.embed('m', body) FROM \"D\") SELECT * FROM x",
        "WITH RECURSIVE d AS (DELETE FROM t RETURNING body), x AS (SELECT pgml.embed('m', body) FROM u) SELECT * FROM x",
    ] {
        assert!(
            matches!(
                plan_statement(sql, &[]),
                StatementPlan::PassThrough {
                    reason: PassThroughReason::DataModifyingCte
                }
            ),
            "{sql}"
        );
    }
    // Not named: left out of the prefetch, which reads the others.
    let StatementPlan::Prefetch(p) = plan_statement(
        "WITH a AS (SELECT 1 AS one), d AS (DELETE FROM t RETURNING body), x AS (SELECT pgml.embed('m', body) FROM u, a) SELECT * FROM x",
        &[],
    ) else {
        panic!("expected a prefetch plan")
    };
    assert!(
        p.query.contains("(WITH a AS (SELECT 1 AS one), x AS (SELECT pgml.embed('m', body) FROM u, a) SELECT ('m')::text"),
        "{}",
        p.query
    );
}
