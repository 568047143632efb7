//! The PostgresML embeddings article, statement by statement, through the proxy with psql
//! (the default model in place of e5/instructor, which are not available offline), and the
//! vectors of each execution path (constant, prefetch, upcall) against the engine's own.

use std::fs;

use pgml_integration_tests::{
    connect, engine_embed, max_abs_diff, parse_real_array, psql_script, scratch_dir, stack,
    DEFAULT_MODEL,
};
use tokio_postgres::SimpleQueryMessage;

/// Values of `name=value` lines that psql `\echo`ed.
fn echoed<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}=");
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn one<'a>(out: &'a str, name: &str) -> &'a str {
    match echoed(out, name).as_slice() {
        [v] => v,
        other => panic!("expected one {name}= line, got {other:?}\n{out}"),
    }
}

#[test]
fn article_statements_work_through_psql() {
    let m = DEFAULT_MODEL;
    let script = format!(
        r#"
\set ON_ERROR_STOP 0
SELECT array_length(pgml.embed('{m}', 'passage: hi mom'), 1) AS dims \gset
\echo scalar_dims=:dims
SELECT array_length(pgml.embed(transformer => '{m}', text => 'passage: hi mom'), 1) AS dims \gset
\echo named_dims=:dims
SELECT pgml.embed(transformer => '{m}', text => 'passage: hi mom')
     = pgml.embed('{m}', 'passage: hi mom', '{{"device": "cpu"}}') AS same \gset
\echo named_equals_cpu=:same
SELECT pg_typeof(pgml.embed('{m}', 'x'))::text AS t \gset
\echo return_type=:t
SELECT pgml.embed(transformer => 'hkunlp/instructor-xl', text => 'Dow Jones rose 1%',
                  kwargs => '{{"instruction": "Represent the Financial statement:"}}');
\echo instructor_sqlstate=:LAST_ERROR_SQLSTATE
CREATE TABLE article_reviews (id bigserial PRIMARY KEY, review_body text NOT NULL);
INSERT INTO article_reviews (review_body)
SELECT 'review ' || i || ': ' || (ARRAY['great movie, loved it', 'terrible sound and a boring plot',
       'the picture was fine', 'the actors were wonderful', 'arrived broken'])[1 + i % 5]
  FROM generate_series(1, 1000) AS i;
\o /dev/null
SELECT review_body, pgml.embed('{m}', 'passage: ' || review_body, '{{"device": "cpu"}}')
  FROM article_reviews LIMIT 1000;
\o
\echo select_rows=:ROW_COUNT
ALTER TABLE article_reviews ADD COLUMN review_embedding vector(384);
UPDATE article_reviews SET review_embedding = pgml.embed('{m}', 'passage: ' || review_body)
 WHERE id BETWEEN 1 AND 11 AND review_embedding IS NULL;
\echo update_rows=:ROW_COUNT
DO $$ BEGIN
  FOR i IN 1..(SELECT max(id) FROM article_reviews) BY 10 LOOP
    UPDATE article_reviews SET review_embedding = pgml.embed('{m}', 'passage: ' || review_body)
     WHERE id BETWEEN i AND i + 10 AND review_embedding IS NULL;
    COMMIT;
  END LOOP;
END $$;
SELECT count(*) AS n FROM article_reviews WHERE review_embedding IS NULL \gset
\echo still_null=:n
SELECT count(DISTINCT review_embedding::text) AS n FROM article_reviews \gset
\echo distinct_vectors=:n
CREATE INDEX CONCURRENTLY article_reviews_embedding_idx ON article_reviews
 USING ivfflat (review_embedding vector_cosine_ops) WITH (lists = 10);
\echo index_error=:ERROR
ANALYZE article_reviews;
EXPLAIN (COSTS OFF) SELECT review_body FROM article_reviews
 ORDER BY review_embedding <=> pgml.embed('{m}', 'query: which movie had great actors?')::vector LIMIT 5;
SET ivfflat.probes = 10;
SELECT 'nearest=' || review_body FROM article_reviews
 ORDER BY review_embedding <=> pgml.embed('{m}', 'query: terrible sound and a boring plot')::vector LIMIT 5;
"#
    );
    let dir = scratch_dir().join("article");
    let (_, out, err) = psql_script(&stack().url(), &dir, &script);
    let ctx = format!("stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(one(&out, "scalar_dims"), "384", "{ctx}");
    assert_eq!(one(&out, "named_dims"), "384", "{ctx}");
    assert_eq!(one(&out, "named_equals_cpu"), "t", "{ctx}");
    assert_eq!(one(&out, "return_type"), "real[]", "{ctx}");
    assert_eq!(one(&out, "instructor_sqlstate"), "58000", "{ctx}");
    assert!(
        err.contains("hkunlp/instructor-xl"),
        "the error names the model: {ctx}"
    );
    assert_eq!(one(&out, "select_rows"), "1000", "{ctx}");
    assert_eq!(one(&out, "update_rows"), "11", "{ctx}");
    assert_eq!(one(&out, "still_null"), "0", "{ctx}");
    // 1000 different texts ('review N: ...') give 1000 different vectors.
    assert_eq!(one(&out, "distinct_vectors"), "1000", "{ctx}");
    assert_eq!(one(&out, "index_error"), "false", "{ctx}");
    assert_eq!(
        err.matches("ERROR:").count(),
        1,
        "only the instructor model fails: {ctx}"
    );
    assert!(
        out.contains("Index Scan using article_reviews_embedding_idx"),
        "the nearest-neighbour query uses the ivfflat index: {ctx}"
    );
    let nearest = echoed(&out, "nearest");
    assert_eq!(nearest.len(), 5, "{ctx}");
    assert!(
        nearest
            .iter()
            .all(|r| r.ends_with("terrible sound and a boring plot")),
        "the nearest reviews are the ones with that text: {nearest:?}"
    );
    // Nothing of the proxy's machinery leaks to the client.
    assert!(!err.contains("pgml-proxy:upcall"), "{ctx}");
    let _ = fs::remove_dir_all(dir);
}

async fn simple_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

fn assert_close(path: &str, got: &[f32], want: &[f32]) {
    let diff = max_abs_diff(got, want);
    assert!(
        diff <= 1e-6,
        "{path}: the proxy's vector differs from the engine's by {diff}"
    );
}

#[tokio::test]
async fn every_path_returns_the_engines_own_vectors() {
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "pgml-proxy serves embeddings for any Postgres",
        "It's a 'quoted' text with \"double quotes\", commas, {braces} and ünïcødé ✓",
        "short",
    ];
    let want = engine_embed(DEFAULT_MODEL, "{}", &texts);
    let client = connect(&stack().url()).await.expect("connect");

    // Path 1: constants spliced as literals.
    for (text, want) in texts.iter().zip(&want) {
        let sql = format!(
            "SELECT pgml.embed('{DEFAULT_MODEL}', '{}')",
            text.replace('\'', "''")
        );
        let rows = simple_rows(&client, &sql).await;
        let got = parse_real_array(rows[0][0].as_deref().expect("not NULL"));
        assert_close("constant", &got, want);
    }

    // Path 2: a column argument, prefetched.
    client
        .batch_execute("CREATE TABLE fidelity_texts (id int PRIMARY KEY, body text)")
        .await
        .expect("create");
    let insert = client
        .prepare("INSERT INTO fidelity_texts VALUES ($1, $2)")
        .await
        .expect("prepare");
    for (i, text) in texts.iter().enumerate() {
        client
            .execute(&insert, &[&(i as i32), text])
            .await
            .expect("insert");
    }
    let rows = simple_rows(
        &client,
        &format!("SELECT id, pgml.embed('{DEFAULT_MODEL}', body) FROM fidelity_texts ORDER BY id"),
    )
    .await;
    assert_eq!(rows.len(), texts.len());
    for (row, want) in rows.iter().zip(&want) {
        let got = parse_real_array(row[1].as_deref().expect("not NULL"));
        assert_close("prefetch", &got, want);
    }

    // Path 3: inside a function the proxy never sees (the statement does not mention pgml).
    client
        .batch_execute(&format!(
            "CREATE FUNCTION fidelity_embed(t text) RETURNS real[] LANGUAGE plpgsql AS \
             $$ BEGIN RETURN pgml.embed('{DEFAULT_MODEL}', t); END $$"
        ))
        .await
        .expect("create function");
    let rows = simple_rows(
        &client,
        "SELECT id, fidelity_embed(body) FROM fidelity_texts ORDER BY id",
    )
    .await;
    assert_eq!(rows.len(), texts.len());
    for (row, want) in rows.iter().zip(&want) {
        let got = parse_real_array(row[1].as_deref().expect("not NULL"));
        assert_close("upcall", &got, want);
    }
}
