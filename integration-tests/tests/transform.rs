//! pgml.transform and pgml.transform_stream end to end: the release proxy (embedded Postgres)
//! routes models with `--remote-model` to the OpenAI-compatible test server of this crate
//! (`openai_server`), and every call path reaches it through the upcall: constant arguments,
//! SELECT * FROM, column arguments per row, prepared statements with typed parameters as
//! korvus sends them, DO blocks, psql, a cursor read with FETCH. The server's side is checked
//! too: endpoint, model, messages, stream flag, args mapped and passed through, bearer token.
//! Errors (no route, an HTTP 500, a server vanishing mid-stream) leave the session usable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgml_integration_tests::openai_server::{
    chat_answer, completion_of, pieces_of, Knobs, OpenAiServer, Recorded,
};
use pgml_integration_tests::{
    connect, psql_script, scratch_dir, spawn_embedded, Jsonb, Proxy, DEFAULT_MODEL,
};
use serde_json::{json, Value};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

/// Routed to the healthy server.
const LLM: &str = "test/llm";
/// Routed to a server that answers HTTP 500 to everything.
const FAILING: &str = "test/failing";
/// Routed to a server that closes the socket after two stream chunks.
const VANISHING: &str = "test/vanishing";
/// Routed to a server that waits 3 s before answering (and 100 ms between stream chunks).
const SLOW: &str = "test/slow";
/// Routed to a server that sends its stream's chunks 300 ms apart.
const TRICKLE: &str = "test/trickle";
/// Routed to a server that streams a long answer, chunks 30 ms apart.
const LONG: &str = "test/long";
/// As LONG, for the test that commits (each test counts its own model's chunks).
const LONG_COMMIT: &str = "test/long-commit";
/// As LONG, for the test that closes its cursor.
const LONG_CLOSE: &str = "test/long-close";
/// Routed to a server that waits 100 ms before each answer (column arguments at once).
const CONCURRENT: &str = "test/concurrent";
/// The bearer token the proxy reads from PGML_PROXY_REMOTE_TOKEN.
const TOKEN: &str = "sk-transform-test-token";

struct Setup {
    server: OpenAiServer,
    proxy: Proxy,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let server = OpenAiServer::start();
        server.set_knobs(
            FAILING,
            Knobs {
                fail: Some((500, "the GPU caught fire".into())),
                ..Knobs::default()
            },
        );
        server.set_knobs(
            VANISHING,
            Knobs {
                vanish_after: Some(2),
                ..Knobs::default()
            },
        );
        server.set_knobs(
            SLOW,
            Knobs {
                delay: Duration::from_secs(3),
                chunk_delay: Duration::from_millis(100),
                ..Knobs::default()
            },
        );
        server.set_knobs(
            TRICKLE,
            Knobs {
                chunk_delay: Duration::from_millis(300),
                ..Knobs::default()
            },
        );
        server.set_knobs(
            CONCURRENT,
            Knobs {
                delay: Duration::from_millis(100),
                ..Knobs::default()
            },
        );
        for model in [LONG, LONG_COMMIT, LONG_CLOSE] {
            server.set_knobs(
                model,
                Knobs {
                    chunk_delay: Duration::from_millis(30),
                    ..Knobs::default()
                },
            );
        }
        // The child inherits it (Rust's own environment lock orders this with other readers).
        std::env::set_var("PGML_PROXY_REMOTE_TOKEN", TOKEN);
        let routes: Vec<String> = [
            LLM,
            FAILING,
            VANISHING,
            SLOW,
            TRICKLE,
            LONG,
            LONG_COMMIT,
            LONG_CLOSE,
            CONCURRENT,
        ]
        .iter()
        .map(|m| format!("{m}={}", server.url()))
        .collect();
        let mut args = Vec::new();
        for route in &routes {
            args.extend(["--remote-model", route.as_str()]);
        }
        let proxy = spawn_embedded("transform", "pgdata-transform", &args);
        Setup { server, proxy }
    })
}

async fn client() -> tokio_postgres::Client {
    connect(&setup().proxy.url())
        .await
        .expect("through the proxy")
}

/// The requests whose JSON body contains `needle` (a marker unique to one test).
fn requests_with(needle: &str) -> Vec<Recorded> {
    setup()
        .server
        .requests()
        .into_iter()
        .filter(|r| r.body.to_string().contains(needle))
        .collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The text-generation task object for `model`.
fn task(model: &str) -> String {
    json!({"task": "text-generation", "model": model}).to_string()
}

fn rows_text(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .collect()
}

/// The streamed pieces of rows `["piece"]` (the server's first chat delta, empty, makes no
/// row).
fn pieces(rows: &[String]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            let row = parse(r);
            let items = row.as_array().expect("a JSON array per row");
            assert_eq!(items.len(), 1, "one piece per row: {r}");
            items[0].as_str().expect("a string piece").to_owned()
        })
        .collect()
}

/// The session goes on after an error: SELECT 1 and a new pgml.transform both answer.
async fn still_usable(client: &tokio_postgres::Client, marker: &str) {
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let sql = format!(
        "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['{marker}'])::text",
        task(LLM)
    );
    let answer: String = client.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(parse(&answer), json!([completion_of(marker)]));
}

#[tokio::test]
async fn the_docs_call_returns_one_generation_per_input_in_order_from_the_completions_endpoint() {
    let client = client().await;
    let sql = format!(
        "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['docs call one', 'docs call two'], \
         args => '{{\"max_new_tokens\": 50, \"temperature\": 0.5, \"unheard_of_arg\": \"kept\"}}'::jsonb)",
        task(LLM)
    );
    let rows = rows_text(&client.simple_query(&sql).await.unwrap());
    assert_eq!(
        rows.iter().map(|r| parse(r)).collect::<Vec<_>>(),
        vec![json!([
            completion_of("docs call one"),
            completion_of("docs call two")
        ])]
    );
    // One POST /v1/completions per input, as the engine's OpenAI mapping says.
    let seen = requests_with("docs call");
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in &seen {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/completions")
        );
        assert_eq!(r.model(), Some(LLM));
        assert_eq!(
            r.body["max_tokens"],
            json!(50),
            "max_new_tokens mapped: {}",
            r.body
        );
        assert_eq!(r.body["temperature"], json!(0.5), "{}", r.body);
        assert_eq!(
            r.body["unheard_of_arg"],
            json!("kept"),
            "passed through: {}",
            r.body
        );
        assert_ne!(r.body["stream"], json!(true), "{}", r.body);
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    let mut prompts: Vec<Value> = seen.iter().map(|r| r.body["prompt"].clone()).collect();
    prompts.sort_by_key(|p| p.to_string());
    assert!(
        prompts == [json!("docs call one"), json!("docs call two")]
            || prompts == [json!(["docs call one"]), json!(["docs call two"])],
        "{prompts:?}"
    );
}

#[tokio::test]
async fn chat_messages_as_jsonb_go_to_chat_completions_and_answer_the_assistant_text() {
    let client = client().await;
    for task_name in ["conversational", "text-generation"] {
        let marker = format!("chat via {task_name}");
        let sql = format!(
            "SELECT pgml.transform(task => '{{\"task\": \"{task_name}\", \"model\": \"{LLM}\"}}'::jsonb, \
             inputs => ARRAY['{{\"role\": \"system\", \"content\": \"be brief\"}}'::jsonb, \
                             '{{\"role\": \"user\", \"content\": \"{marker}\"}}'::jsonb])::text"
        );
        let answer: String = client.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(parse(&answer), json!([format!("echo: {marker}")]));
        let seen = requests_with(&marker);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].path, "/v1/chat/completions");
        assert_eq!(seen[0].model(), Some(LLM));
        assert_eq!(
            seen[0].body["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": marker}])
        );
    }
}

#[tokio::test]
async fn a_text_task_takes_the_model_from_args_and_serves_select_star_from() {
    let client = client().await;
    let sql = format!(
        "SELECT pgml.transform('text-generation', '{{\"model\": \"{LLM}\", \"max_new_tokens\": 5}}'::jsonb, \
         ARRAY['text task'])::text"
    );
    let answer: String = client.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(parse(&answer), json!([completion_of("text task")]));
    let seen = requests_with("text task");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].model(), Some(LLM));
    assert_eq!(seen[0].body["max_tokens"], json!(5));

    let sql = format!(
        "SELECT * FROM pgml.transform(task => '{}'::jsonb, inputs => ARRAY['from clause'])",
        task(LLM)
    );
    let messages = client.simple_query(&sql).await.unwrap();
    let columns: Vec<String> = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some(r.columns().iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .expect("a row");
    assert_eq!(columns, ["transform"]);
    assert_eq!(
        rows_text(&messages)
            .iter()
            .map(|r| parse(r))
            .collect::<Vec<_>>(),
        [json!([completion_of("from clause")])]
    );
}

#[tokio::test]
async fn a_column_argument_is_one_request_per_row() {
    let client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS prompts; CREATE TABLE prompts (id int, body text);
             INSERT INTO prompts VALUES (1, 'row prompt one'), (2, 'row prompt two'), (3, 'row prompt three')",
        )
        .await
        .unwrap();
    let sql = format!(
        "SELECT id, pgml.transform(task => '{}'::jsonb, inputs => ARRAY[body])::text FROM prompts ORDER BY id",
        task(LLM)
    );
    let want = [
        (1, json!([completion_of("row prompt one")])),
        (2, json!([completion_of("row prompt two")])),
        (3, json!([completion_of("row prompt three")])),
    ];
    // The extended protocol...
    let got: Vec<(i32, Value)> = client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), parse(&r.get::<_, String>(1))))
        .collect();
    assert_eq!(got, want);
    // ...and the simple one.
    let got: Vec<(i32, Value)> = client
        .simple_query(&sql)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().parse().unwrap(), parse(r.get(1).unwrap())))
            }
            _ => None,
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        requests_with("row prompt two").len(),
        2,
        "one request per row and statement"
    );
}

#[tokio::test]
async fn column_arguments_are_asked_for_all_at_once_within_the_servers_bound() {
    let client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS many_prompts; CREATE TABLE many_prompts (id int, body text);
             INSERT INTO many_prompts SELECT n, 'many prompt ' || (n % 40) FROM generate_series(1, 48) n",
        )
        .await
        .unwrap();
    let sql = format!(
        "SELECT id, pgml.transform(task => '{}'::jsonb, inputs => ARRAY[body], args => '{{\"max_new_tokens\": 7}}'::jsonb)::text \
         FROM many_prompts WHERE id > 0 ORDER BY id",
        task(CONCURRENT)
    );
    let started = Instant::now();
    let rows = client.query(&sql, &[]).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(rows.len(), 48);
    for row in &rows {
        let id: i32 = row.get(0);
        let want = json!([completion_of(&format!("many prompt {}", id % 40))]);
        assert_eq!(parse(&row.get::<_, String>(1)), want, "row {id}");
    }
    // 40 distinct prompts (rows 41..48 repeat 1..8): one request each, at most 32 at a time
    // (the generator's bound per server), not one after another.
    let requests = setup().server.requests_for(CONCURRENT);
    assert_eq!(requests.len(), 40, "one request per distinct row");
    assert!(requests
        .iter()
        .all(|r| r.body.get("max_tokens") == Some(&json!(7))));
    let most = setup().server.max_in_flight(CONCURRENT);
    assert!((8..=32).contains(&most), "{most} requests at once");
    assert!(
        elapsed < Duration::from_millis(40 * 100 / 2),
        "40 answers of 100 ms took {elapsed:?}"
    );
}

#[tokio::test]
async fn a_column_argument_in_an_update_fails_whole_on_a_server_error_and_null_is_22004() {
    let client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS answered; CREATE TABLE answered (id int, question text, answer jsonb);
             INSERT INTO answered VALUES (1, 'update question one', NULL), (2, 'update question two', NULL)",
        )
        .await
        .unwrap();
    let update = |model: &str| {
        format!(
            "UPDATE answered SET answer = pgml.transform('text-generation', '{{\"model\": \"{model}\"}}', ARRAY[question])"
        )
    };
    let updated = client.execute(&update(LLM), &[]).await.unwrap();
    assert_eq!(updated, 2);
    let rows = client
        .query(
            "SELECT question, answer::text FROM answered ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let question: String = row.get(0);
        assert_eq!(
            parse(&row.get::<_, String>(1)),
            json!([completion_of(&question)])
        );
    }
    // A server error fails the statement where Postgres reaches the call: nothing changes, and
    // the server is asked as often per row as for one call (its retries), not again by an
    // upcall.
    let one_call = format!(
        "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['failing baseline'])",
        task(FAILING)
    );
    client.simple_query(&one_call).await.expect_err("HTTP 500");
    let attempts = requests_with("failing baseline").len();
    assert!(attempts >= 1);
    client
        .batch_execute("UPDATE answered SET question = 'failing ' || question")
        .await
        .unwrap();
    let err = client
        .execute(&update(FAILING), &[])
        .await
        .expect_err("HTTP 500");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "58000", "{}", db.message());
    assert!(
        db.message().contains("the GPU caught fire"),
        "{}",
        db.message()
    );
    assert_eq!(requests_with("failing update question one").len(), attempts);
    let answers = "SELECT answer::text FROM answered ORDER BY id";
    let unchanged: Vec<String> = client
        .query(answers, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let before: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(unchanged, before, "the failed UPDATE changed nothing");
    // A NULL input is pgml.transform's own error, as it is without the proxy's prefetch.
    let err = client
        .simple_query(&format!(
            "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY[NULLIF(question, question)]) FROM answered",
            task(LLM)
        ))
        .await
        .expect_err("a NULL input");
    assert_eq!(err.code().map(|c| c.code()), Some("22004"), "{err}");
    still_usable(&client, "after a failed column update").await;
}

#[tokio::test]
async fn cache_true_answers_a_repeated_call_from_memory() {
    let client = client().await;
    let call = |cache: bool| {
        format!(
            "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['cache me'], cache => {cache})::text",
            task(LLM)
        )
    };
    for _ in 0..3 {
        let answer: String = client.query_one(&call(true), &[]).await.unwrap().get(0);
        assert_eq!(parse(&answer), json!([completion_of("cache me")]));
    }
    assert_eq!(
        requests_with("cache me").len(),
        1,
        "one request, then memory"
    );
    client.query_one(&call(false), &[]).await.unwrap();
    assert_eq!(
        requests_with("cache me").len(),
        2,
        "without cache, the server"
    );
}

#[tokio::test]
async fn prepared_statements_with_typed_parameters_as_korvus_sends_them() {
    let client = client().await;
    let statement = client
        .prepare_typed(
            "SELECT pgml.transform(task => $1, inputs => $2, args => $3)::text",
            &[Type::JSONB, Type::TEXT_ARRAY, Type::JSONB],
        )
        .await
        .unwrap();
    let task_json = task(LLM);
    for prompt in ["prepared one", "prepared two"] {
        let row = client
            .query_one(
                &statement,
                &[
                    &Jsonb(&task_json),
                    &vec![prompt],
                    &Jsonb("{\"max_new_tokens\": 7}"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            parse(&row.get::<_, String>(0)),
            json!([completion_of(prompt)])
        );
    }
    assert_eq!(
        requests_with("prepared one")[0].body["max_tokens"],
        json!(7)
    );

    // Chat: jsonb[] messages.
    let statement = client
        .prepare_typed(
            "SELECT pgml.transform(task => $1, inputs => $2, args => $3)::text",
            &[Type::JSONB, Type::JSONB_ARRAY, Type::JSONB],
        )
        .await
        .unwrap();
    let chat_task = json!({"task": "conversational", "model": LLM}).to_string();
    let message = json!({"role": "user", "content": "prepared chat"}).to_string();
    let row = client
        .query_one(
            &statement,
            &[&Jsonb(&chat_task), &vec![Jsonb(&message)], &Jsonb("{}")],
        )
        .await
        .unwrap();
    assert_eq!(
        parse(&row.get::<_, String>(0)),
        json!([chat_answer(&[parse(&message)])])
    );
    assert_eq!(
        requests_with("prepared chat")[0].path,
        "/v1/chat/completions"
    );
}

#[tokio::test]
async fn a_prepared_statement_with_a_column_argument_and_parameters_is_prefetched() {
    let client = client().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS chats; CREATE TABLE chats (id int, message jsonb);
             INSERT INTO chats SELECT n, jsonb_build_object('role', 'user', 'content', 'prepared column ' || n)
               FROM generate_series(1, 6) n",
        )
        .await
        .unwrap();
    // Chat messages read from a jsonb column, the task and args bound as parameters, the
    // rows chosen by a parameter: the proxy's prefetch binds the same values.
    let statement = client
        .prepare_typed(
            "SELECT id, pgml.transform(task => $1, inputs => ARRAY[message], args => $2)::text \
             FROM chats WHERE id <= $3 ORDER BY id",
            &[Type::JSONB, Type::JSONB, Type::INT4],
        )
        .await
        .unwrap();
    let chat_task = json!({"task": "conversational", "model": LLM}).to_string();
    let rows = client
        .query(
            &statement,
            &[&Jsonb(&chat_task), &Jsonb("{\"max_tokens\": 9}"), &5i32],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for row in &rows {
        let id: i32 = row.get(0);
        let message = json!({"role": "user", "content": format!("prepared column {id}")});
        assert_eq!(
            parse(&row.get::<_, String>(1)),
            json!([chat_answer(&[message])]),
            "row {id}"
        );
    }
    let sent = requests_with("prepared column");
    assert_eq!(sent.len(), 5, "one request per row chosen");
    assert!(sent
        .iter()
        .all(|r| r.path == "/v1/chat/completions" && r.body["max_tokens"] == json!(9)));
}

#[tokio::test]
async fn a_do_block_and_a_statement_that_also_embeds() {
    let client = client().await;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS generated; CREATE TABLE generated (answer jsonb);
             DO $$ BEGIN
                 INSERT INTO generated SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['in a do block']);
             END $$;",
            task(LLM)
        ))
        .await
        .unwrap();
    let answer: String = client
        .query_one("SELECT answer::text FROM generated", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parse(&answer), json!([completion_of("in a do block")]));

    // pgml.embed is planned by the proxy; pgml.transform in the same statement is the upcall.
    let row = client
        .query_one(
            &format!(
                "SELECT array_length(pgml.embed('{DEFAULT_MODEL}', 'embedded beside'), 1),
                        pgml.transform(task => '{}'::jsonb, inputs => ARRAY['beside an embed'])::text",
                task(LLM)
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 384);
    assert_eq!(
        parse(&row.get::<_, String>(1)),
        json!([completion_of("beside an embed")])
    );
}

#[tokio::test]
async fn transform_stream_returns_one_row_per_streamed_piece() {
    let client = client().await;
    let prompt = "streamed plain select words";
    let sql = format!(
        "SELECT pgml.transform_stream(task => '{}'::jsonb, input => '{prompt}', args => '{{\"max_new_tokens\": 9}}'::jsonb)::text",
        task(LLM)
    );
    let rows = rows_text(&client.simple_query(&sql).await.unwrap());
    assert_eq!(pieces(&rows), pieces_of(&completion_of(prompt)));
    let seen = requests_with(prompt);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/completions");
    assert_eq!(seen[0].body["stream"], json!(true));
    assert_eq!(seen[0].body["max_tokens"], json!(9));

    // Chat messages (jsonb[]), the task as text.
    let sql = "SELECT pgml.transform_stream('conversational', '{\"model\": \"test/llm\"}'::jsonb, \
               ARRAY['{\"role\": \"user\", \"content\": \"stream this chat\"}'::jsonb])::text";
    let rows = rows_text(&client.simple_query(sql).await.unwrap());
    assert_eq!(pieces(&rows), pieces_of("echo: stream this chat"));
    let seen = requests_with("stream this chat");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body["stream"], json!(true));
}

#[tokio::test]
async fn a_cursor_fetches_the_stream_two_rows_at_a_time_in_order() {
    let client = client().await;
    let prompt = "a cursor reads these seven streamed words";
    client
        .batch_execute(&format!(
            "BEGIN; DECLARE c CURSOR FOR SELECT pgml.transform_stream(task => '{}'::jsonb, input => '{prompt}')::text",
            task(LLM)
        ))
        .await
        .unwrap();
    let mut rows = Vec::new();
    loop {
        let batch = rows_text(&client.simple_query("FETCH 2 FROM c").await.unwrap());
        assert!(batch.len() <= 2);
        if batch.is_empty() {
            break;
        }
        rows.extend(batch);
    }
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pieces(&rows), pieces_of(&completion_of(prompt)));
}

#[tokio::test]
async fn psql_gets_the_generation() {
    let dir = scratch_dir().join("transform-psql");
    let (ok, out, err) = psql_script(
        &setup().proxy.url(),
        &dir,
        &format!(
            "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['through psql']);\n",
            task(LLM)
        ),
    );
    assert!(ok, "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(parse(out.trim()), json!([completion_of("through psql")]));
}

#[tokio::test]
async fn an_unrouted_model_names_itself_and_the_flag_and_the_session_goes_on() {
    let client = client().await;
    let sql = format!(
        "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['nowhere'])",
        task("acme/unrouted-llm")
    );
    let err = client.simple_query(&sql).await.expect_err("no route");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "42704", "{}", db.message());
    assert!(
        db.message().contains("acme/unrouted-llm"),
        "{}",
        db.message()
    );
    assert!(db.message().contains("--remote-model"), "{}", db.message());
    still_usable(&client, "after no route").await;

    // Other pipelines are not routed (0A000); malformed messages and NULL inputs are refused
    // before any request.
    for (sql, code, says) in [
        (
            format!("SELECT pgml.transform(task => '{{\"task\": \"summarization\", \"model\": \"{LLM}\"}}'::jsonb, inputs => ARRAY['x'])"),
            "0A000",
            "\"summarization\"",
        ),
        (
            format!("SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['\"just a string\"'::jsonb])", task(LLM)),
            "22023",
            "chat input 1",
        ),
        (
            format!("SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['a', NULL])", task(LLM)),
            "22004",
            "NULL",
        ),
    ] {
        let err = client.simple_query(&sql).await.expect_err(&sql);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        assert!(db.message().contains(says), "{sql}: {}", db.message());
    }
    still_usable(&client, "after refusals").await;
}

#[tokio::test]
async fn a_server_error_carries_its_status_and_message_and_the_session_goes_on() {
    let client = client().await;
    let sql = format!(
        "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['to a failing server'])",
        task(FAILING)
    );
    let err = client.simple_query(&sql).await.expect_err("HTTP 500");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "58000", "{}", db.message());
    assert!(db.message().contains("500"), "{}", db.message());
    assert!(
        db.message().contains("the GPU caught fire"),
        "{}",
        db.message()
    );
    assert!(!requests_with("to a failing server").is_empty());
    still_usable(&client, "after a 500").await;
}

#[tokio::test]
async fn a_server_vanishing_mid_stream_is_an_error_and_the_session_goes_on() {
    let client = client().await;
    let sql = format!(
        "SELECT pgml.transform_stream(task => '{{\"task\": \"conversational\", \"model\": \"{VANISHING}\"}}'::jsonb, \
         inputs => ARRAY['{{\"role\": \"user\", \"content\": \"vanish after two chunks please\"}}'::jsonb])"
    );
    let err = client.simple_query(&sql).await.expect_err("cut stream");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "58000", "{}", db.message());
    assert!(!requests_with("vanish after two chunks").is_empty());
    still_usable(&client, "after a vanished stream").await;
}

#[tokio::test]
async fn two_sessions_stream_at_once() {
    let (first, second) = (client().await, client().await);
    let sql = |words: &str| {
        format!(
            "SELECT pgml.transform_stream(task => '{{\"task\": \"conversational\", \"model\": \"{SLOW}\"}}'::jsonb, \
             inputs => ARRAY['{{\"role\": \"user\", \"content\": \"{words}\"}}'::jsonb])::text"
        )
    };
    let (a, b) = (sql("first session words"), sql("second session words"));
    let started = Instant::now();
    let (a, b) = tokio::join!(first.simple_query(&a), second.simple_query(&b));
    let elapsed = started.elapsed();
    assert_eq!(
        pieces(&rows_text(&a.unwrap())),
        pieces_of("echo: first session words")
    );
    assert_eq!(
        pieces(&rows_text(&b.unwrap())),
        pieces_of("echo: second session words")
    );
    // Each waits 3 s at the server before its first chunk: served one after the other they
    // would take over 6 s.
    assert!(elapsed < Duration::from_millis(5500), "{elapsed:?}");
}

#[tokio::test]
async fn a_server_slower_than_the_upcall_timeout_is_57014_and_the_session_goes_on() {
    let server = &setup().server;
    let routes: Vec<String> = [LLM, SLOW, TRICKLE]
        .iter()
        .map(|m| format!("{m}={}", server.url()))
        .collect();
    let proxy = spawn_embedded(
        "transform-timeout",
        "pgdata-transform-timeout",
        &[
            "--upcall-timeout-ms",
            "1000",
            "--remote-model",
            &routes[0],
            "--remote-model",
            &routes[1],
            "--remote-model",
            &routes[2],
        ],
    );
    let client = connect(&proxy.url()).await.expect("through the proxy");
    let started = Instant::now();
    let err = client
        .simple_query(&format!(
            "SELECT pgml.transform(task => '{}'::jsonb, inputs => ARRAY['too slow'])",
            task(SLOW)
        ))
        .await
        .expect_err("timed out");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "57014", "{}", db.message());
    assert!(db.message().contains("pgml.transform"), "{}", db.message());
    assert!(
        db.message().contains("--upcall-timeout-ms"),
        "{}",
        db.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    still_usable(&client, "after a timeout").await;

    // A stream lasting longer than the timeout, read in a read-only transaction (where the
    // reader cannot delete what it takes): pieces keep coming, the writer keeps writing.
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; DECLARE c CURSOR FOR SELECT pgml.transform_stream(\
             task => '{{\"task\": \"conversational\", \"model\": \"{TRICKLE}\"}}'::jsonb, \
             inputs => ARRAY['{{\"role\": \"user\", \"content\": \"read only and slow\"}}'::jsonb])::text"
        ))
        .await
        .unwrap();
    let mut rows = Vec::new();
    loop {
        let batch = rows_text(&client.simple_query("FETCH 1 FROM c").await.unwrap());
        if batch.is_empty() {
            break;
        }
        rows.extend(batch);
    }
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pieces(&rows), pieces_of("echo: read only and slow"));
}

#[tokio::test]
async fn a_cursor_gets_the_first_pieces_while_the_server_is_still_streaming() {
    let client = client().await;
    // Eight chunks 300 ms apart (the role, six words, the finish): about 2.1 s in all.
    let words = "one two three four five trickled";
    client
        .batch_execute(&format!(
            "BEGIN; DECLARE c CURSOR FOR SELECT pgml.transform_stream(\
             task => '{{\"task\": \"conversational\", \"model\": \"{TRICKLE}\"}}'::jsonb, \
             inputs => ARRAY['{{\"role\": \"user\", \"content\": \"{words}\"}}'::jsonb])::text"
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let first = rows_text(&client.simple_query("FETCH 1 FROM c").await.unwrap());
    let first_after = started.elapsed();
    let mut rows = first.clone();
    loop {
        let batch = rows_text(&client.simple_query("FETCH 2 FROM c").await.unwrap());
        if batch.is_empty() {
            break;
        }
        rows.extend(batch);
    }
    let all_after = started.elapsed();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pieces(&rows), pieces_of(&format!("echo: {words}")));
    assert_eq!(pieces(&first), ["echo:"]);
    // The first piece came with the server's second chunk (~0.3 s), not after its last.
    assert!(
        first_after < Duration::from_millis(1200),
        "first row after {first_after:?}"
    );
    assert!(all_after > Duration::from_millis(1800), "{all_after:?}");

    // A LIMIT ends the statement after the pieces it needs.
    let started = Instant::now();
    let rows = rows_text(
        &client
            .simple_query(&format!(
                "SELECT pgml.transform_stream(\
                 task => '{{\"task\": \"conversational\", \"model\": \"{TRICKLE}\"}}'::jsonb, \
                 inputs => ARRAY['{{\"role\": \"user\", \"content\": \"a limit of two here\"}}'::jsonb])::text LIMIT 2"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(pieces(&rows), ["echo:", " a"]);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    still_usable(&client, "after a limit").await;
}

#[tokio::test]
async fn a_plain_select_gets_its_first_row_while_the_server_is_still_streaming() {
    use futures::StreamExt;
    let client = client().await;
    let words = "plain select rows arrive early";
    let sql = format!(
        "SELECT pgml.transform_stream(\
         task => '{{\"task\": \"conversational\", \"model\": \"{TRICKLE}\"}}'::jsonb, \
         inputs => ARRAY['{{\"role\": \"user\", \"content\": \"{words}\"}}'::jsonb])::text"
    );
    let started = Instant::now();
    let stream = client.simple_query_raw(&sql).await.unwrap();
    futures::pin_mut!(stream);
    let (mut first, mut rows) = (None, Vec::new());
    while let Some(message) = stream.next().await {
        if let SimpleQueryMessage::Row(row) = message.unwrap() {
            first.get_or_insert_with(|| started.elapsed());
            rows.push(row.get(0).unwrap().to_owned());
        }
    }
    let all = started.elapsed();
    assert_eq!(pieces(&rows), pieces_of(&format!("echo: {words}")));
    let first = first.expect("rows");
    // The server's chunks come 300 ms apart (~2.1 s in all): the first row came with the
    // second chunk, not with the statement's end.
    assert!(
        first < Duration::from_millis(1200),
        "first row after {first:?}"
    );
    assert!(all > Duration::from_millis(1800), "{all:?}");
}

/// BEGIN; DECLARE c for a 100-word chat answer of `model` (103 chunks 30 ms apart, about 3 s),
/// and FETCH its first piece.
async fn start_long_stream(client: &tokio_postgres::Client, model: &str) {
    let words: Vec<String> = (0..100).map(|n| format!("w{n}")).collect();
    let words = words.join(" ");
    client
        .batch_execute(&format!(
            "BEGIN; DECLARE c CURSOR FOR SELECT pgml.transform_stream(\
             task => '{{\"task\": \"conversational\", \"model\": \"{model}\"}}'::jsonb, \
             inputs => ARRAY['{{\"role\": \"user\", \"content\": \"{words}\"}}'::jsonb])::text"
        ))
        .await
        .unwrap();
    let first = rows_text(&client.simple_query("FETCH 1 FROM c").await.unwrap());
    assert_eq!(pieces(&first), ["echo:"]);
}

/// The server stopped writing `model`'s stream within 1.5 s, well before its end.
async fn assert_server_stopped(model: &str) {
    let written = || {
        setup()
            .server
            .chunks_written()
            .iter()
            .filter(|w| w.model == model)
            .count()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let soon_after = written();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = written();
    assert_eq!(soon_after, later, "the server went on streaming");
    assert!(later < 60, "{later} of 103 chunks written");
}

#[tokio::test]
async fn a_reader_that_disconnects_stops_the_servers_stream() {
    let client = client().await;
    start_long_stream(&client, LONG).await;
    drop(client);
    assert_server_stopped(LONG).await;
}

#[tokio::test]
async fn a_reader_that_commits_its_cursors_transaction_stops_the_servers_stream() {
    let client = client().await;
    start_long_stream(&client, LONG_COMMIT).await;
    client.batch_execute("COMMIT").await.unwrap();
    assert_server_stopped(LONG_COMMIT).await;
    still_usable(&client, "after the commit").await;
}

#[tokio::test]
async fn a_reader_that_closes_its_cursor_in_an_open_transaction_stops_the_servers_stream() {
    let client = client().await;
    start_long_stream(&client, LONG_CLOSE).await;
    // Another cursor, not reading a stream, stays open: the stream's is the only one closed.
    client
        .batch_execute("DECLARE other CURSOR FOR SELECT generate_series(1, 3); CLOSE c")
        .await
        .unwrap();
    assert_server_stopped(LONG_CLOSE).await;
    let rest = rows_text(&client.simple_query("FETCH ALL FROM other").await.unwrap());
    assert_eq!(rest, ["1", "2", "3"]);
    client.batch_execute("COMMIT").await.unwrap();
    still_usable(&client, "after the close").await;
}

#[tokio::test]
async fn a_cursor_declared_with_parameters_as_korvus_streams() {
    let mut client = client().await;
    let transaction = client.transaction().await.unwrap();
    let chat_task = json!({"task": "conversational", "model": LLM}).to_string();
    let message = json!({"role": "user", "content": "korvus streams this"}).to_string();
    let declare = transaction
        .prepare_typed(
            "DECLARE c CURSOR FOR SELECT pgml.transform_stream(task => $1, inputs => $2, args => $3)::text",
            &[Type::JSONB, Type::JSONB_ARRAY, Type::JSONB],
        )
        .await
        .unwrap();
    transaction
        .execute(
            &declare,
            &[
                &Jsonb(&chat_task),
                &vec![Jsonb(&message)],
                &Jsonb("{\"max_new_tokens\": 20}"),
            ],
        )
        .await
        .unwrap();
    let mut rows = Vec::new();
    loop {
        let batch: Vec<String> = transaction
            .query("FETCH 2 FROM c", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if batch.is_empty() {
            break;
        }
        rows.extend(batch);
    }
    transaction.commit().await.unwrap();
    assert_eq!(pieces(&rows), pieces_of("echo: korvus streams this"));
    let seen = requests_with("korvus streams this");
    assert_eq!(seen[0].body["stream"], json!(true));
    assert_eq!(seen[0].body["max_tokens"], json!(20));
}
