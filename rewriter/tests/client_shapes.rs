//! The statements PostgresML's own clients send (Spring AI's batch embedding, korvus's
//! INSERT ... SELECT and array_agg forms, both with `$n` parameters) are planned as prefetch
//! statements, so the proxy serves them in one engine batch per execution.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgml_rewriter::{plan_statement, StatementPlan};

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
