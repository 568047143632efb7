//! pgml.embed in the extended protocol: tokio-postgres prepared statements (Describe shows the
//! client's own parameters only), binary `real[]` and pgvector results, pipelining, named
//! arguments with a jsonb kwargs parameter, and psql's `\bind` for text-format results.

use futures::future::join_all;
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
                "{tag} sentence number {i} about {}",
                ["cats", "databases", "rain"][i % 3]
            )
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= 1e-6, "{what}: differs from the engine by {diff}");
}

#[tokio::test]
async fn prepared_embed_hides_its_extra_parameter_and_serves_many_values() {
    let client = client().await;
    let stmt = client
        .prepare("SELECT pgml.embed($1, $2)")
        .await
        .expect("prepare");
    assert_eq!(
        stmt.params(),
        &[Type::TEXT, Type::TEXT],
        "Describe shows the client's parameters"
    );
    assert_eq!(stmt.columns().len(), 1);
    assert_eq!(stmt.columns()[0].type_(), &Type::FLOAT4_ARRAY);

    let inputs = texts(40, "prepared");
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let want = engine_embed(DEFAULT_MODEL, "{}", &refs);
    for (text, want) in inputs.iter().zip(&want) {
        let row = client
            .query_one(&stmt, &[&DEFAULT_MODEL, text])
            .await
            .expect("execute");
        let got: Vec<f32> = row.get(0);
        assert_close(text, &got, want);
    }

    // A NULL text gives NULL (STRICT), and the statement stays usable.
    let row = client
        .query_one(&stmt, &[&DEFAULT_MODEL, &None::<&str>])
        .await
        .expect("NULL text");
    assert_eq!(row.get::<_, Option<Vec<f32>>>(0), None);
    let row = client
        .query_one(&stmt, &[&DEFAULT_MODEL, &inputs[0]])
        .await
        .expect("after NULL");
    assert_close("after NULL", &row.get::<_, Vec<f32>>(0), &want[0]);
}

#[tokio::test]
async fn pipelined_embeds_answer_in_order_with_the_right_vectors() {
    let client = client().await;
    let stmt = client
        .prepare("SELECT $2::int AS n, pgml.embed($1, 'pipelined: ' || $3) AS e")
        .await
        .expect("prepare");
    assert_eq!(stmt.params().len(), 3);
    let inputs = texts(24, "pipe");
    let prefixed: Vec<String> = inputs.iter().map(|t| format!("pipelined: {t}")).collect();
    let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
    let want = engine_embed(DEFAULT_MODEL, "{}", &refs);
    let ns: Vec<i32> = (0..inputs.len() as i32).collect();
    let futures = inputs.iter().zip(&ns).map(|(text, n)| {
        let (client, stmt) = (&client, &stmt);
        async move { client.query_one(stmt, &[&DEFAULT_MODEL, n, text]).await }
    });
    let rows = join_all(futures).await;
    for (i, row) in rows.into_iter().enumerate() {
        let row = row.expect("pipelined execute");
        assert_eq!(row.get::<_, i32>(0), i as i32);
        assert_close(&prefixed[i], &row.get::<_, Vec<f32>>(1), &want[i]);
    }

    // Unnamed statements (query with a text SQL) pipelined too.
    let futures = (0..8).map(|i| {
        let client = &client;
        let text = inputs[i].clone();
        async move {
            client
                .query_one("SELECT pgml.embed($1, $2)", &[&DEFAULT_MODEL, &text])
                .await
        }
    });
    let other = engine_embed(DEFAULT_MODEL, "{}", &refs_of(&inputs[..8]));
    for (i, row) in join_all(futures).await.into_iter().enumerate() {
        let row = row.expect("unnamed pipelined");
        assert_close(&inputs[i], &row.get::<_, Vec<f32>>(0), &other[i]);
    }
}

fn refs_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn named_arguments_with_a_jsonb_kwargs_parameter() {
    let client = client().await;
    let stmt = client
        .prepare("SELECT pgml.embed(transformer => $1, text => $2, kwargs => $3)")
        .await
        .expect("prepare");
    assert_eq!(stmt.params(), &[Type::TEXT, Type::TEXT, Type::JSONB]);
    let text = "named arguments with kwargs";
    let want = engine_embed(DEFAULT_MODEL, r#"{"device": "cpu"}"#, &[text]);
    let row = client
        .query_one(
            &stmt,
            &[&DEFAULT_MODEL, &text, &Jsonb(r#"{"device": "cpu"}"#)],
        )
        .await
        .expect("execute");
    assert_close("kwargs device", &row.get::<_, Vec<f32>>(0), &want[0]);

    // A prompt changes the result (so kwargs really reach the engine).
    let prompt = r#"{"prompt": "query: "}"#;
    let prompted = engine_embed(DEFAULT_MODEL, prompt, &[text]);
    let row = client
        .query_one(&stmt, &[&DEFAULT_MODEL, &text, &Jsonb(prompt)])
        .await
        .expect("prompt");
    let got: Vec<f32> = row.get(0);
    assert_close("prompt", &got, &prompted[0]);
    assert!(
        max_abs_diff(&got, &want[0]) > 1e-3,
        "the prompt changed the vector"
    );

    // A bad kwargs key is a clear error and the connection keeps working.
    let err = client
        .query_one(&stmt, &[&DEFAULT_MODEL, &text, &Jsonb(r#"{"bogus": 1}"#)])
        .await
        .expect_err("bogus kwargs key");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("bogus"), "{}", db.message());
    let row = client
        .query_one(&stmt, &[&DEFAULT_MODEL, &text, &Jsonb("{}")])
        .await
        .expect("after the error");
    assert_close("after error", &row.get::<_, Vec<f32>>(0), &want[0]);
}

#[tokio::test]
async fn vector_results_in_binary_through_pgvector() {
    let client = client().await;
    let text = "cast to pgvector";
    let want = engine_embed(DEFAULT_MODEL, "{}", &[text]);
    let row = client
        .query_one(
            "SELECT pgml.embed($1, $2)::vector",
            &[&DEFAULT_MODEL, &text],
        )
        .await
        .expect("execute");
    let v: pgvector::Vector = row.get(0);
    assert_close("pgvector", v.as_slice(), &want[0]);
}

#[test]
fn psql_bind_gives_text_format_results() {
    let texts = ["text format one", "text format two"];
    let want = engine_embed(DEFAULT_MODEL, "{}", &texts);
    let script = format!(
        "SELECT 'v=' || pgml.embed($1, $2)::text \\bind '{m}' '{a}' \\g\n\
         SELECT pgml.embed($1, $2) \\bind '{m}' '{b}' \\g\n",
        m = DEFAULT_MODEL,
        a = texts[0],
        b = texts[1]
    );
    let (ok, out, err) = psql_script(&stack().url(), &scratch_dir().join("bind"), &script);
    assert!(ok && err.is_empty(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let first = parse_real_array(lines[0].strip_prefix("v=").expect("v= prefix"));
    assert_close(texts[0], &first, &want[0]);
    assert_close(texts[1], &parse_real_array(lines[1]), &want[1]);
}
