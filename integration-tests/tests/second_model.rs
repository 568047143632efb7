//! A second model through the proxy, named by its hub id as pgml.embed callers name it:
//! sentence-transformers/paraphrase-MiniLM-L3-v2 (laid by `make setup`; no Normalize module,
//! so its vectors keep their length). Every execution path (constant, prefetch, upcall) serves
//! the engine's own vectors for it, of its dimension, into a vector(384) column too.

use pgml_integration_tests::{connect, engine_embed, max_abs_diff, parse_real_array, stack};
use tokio_postgres::SimpleQueryMessage;

const MODEL: &str = "sentence-transformers/paraphrase-MiniLM-L3-v2";

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn second_model_is_served_on_every_path_with_its_own_dimension() {
    let client = connect(&stack().url()).await.expect("connect");
    let bodies = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome",
    ];
    let want = engine_embed(MODEL, "{}", &bodies);
    assert!(want.iter().all(|v| v.len() == 384));

    // Constant argument: spliced into the statement as a literal.
    let messages = client
        .simple_query(&format!(
            "SELECT pgml.embed('{MODEL}', '{}')::text, \
                    array_length(pgml.embed('{MODEL}', '{}'), 1)",
            bodies[0], bodies[0]
        ))
        .await
        .expect("constant call");
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).expect("vector").to_owned(),
                r.get(1).expect("length").to_owned(),
            )),
            _ => None,
        })
        .expect("one row");
    let constant = parse_real_array(&row.0);
    assert_eq!(row.1, "384");
    assert!(max_abs_diff(&constant, &want[0]) <= 1e-6);
    assert!(
        (norm(&constant) - 1.0).abs() > 0.05,
        "not normalised: {}",
        norm(&constant)
    );

    // Row-dependent argument: prefetched, then the statement runs unchanged.
    client
        .batch_execute(&format!(
            "CREATE TABLE second_docs (id int PRIMARY KEY, body text, emb vector(384));
             INSERT INTO second_docs (id, body) VALUES (1, '{}'), (2, '{}'), (3, '{}');",
            bodies[0], bodies[1], bodies[2]
        ))
        .await
        .expect("schema");
    let rows = client
        .query(
            &format!("SELECT pgml.embed('{MODEL}', body) FROM second_docs ORDER BY id"),
            &[],
        )
        .await
        .expect("prefetched select");
    assert_eq!(rows.len(), bodies.len());
    for (row, want) in rows.iter().zip(&want) {
        let v: Vec<f32> = row.get(0);
        assert!(max_abs_diff(&v, want) <= 1e-6, "prefetch path");
    }

    // Inside Postgres (a DO block): the upcall path, into a vector(384) column.
    client
        .batch_execute(&format!(
            "DO $$ BEGIN UPDATE second_docs SET emb = pgml.embed('{MODEL}', body); END $$"
        ))
        .await
        .expect("DO block");
    let rows = client
        .query("SELECT emb FROM second_docs ORDER BY id", &[])
        .await
        .expect("select");
    for (row, want) in rows.iter().zip(&want) {
        let v: Option<pgvector::Vector> = row.get(0);
        let v = v.expect("row filled");
        assert!(max_abs_diff(v.as_slice(), want) <= 1e-6, "upcall path");
    }
}
