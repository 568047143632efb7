//! PostgresML's Python clients, unchanged, calling pgml.transform / pgml.transform_stream
//! through the release proxy, which routes `meta-llama/*` (the pattern form of
//! `--remote-model`) to this crate's OpenAI-compatible test server. korvus 1.1.5
//! (`clients/korvus_rag.py`: OpenSourceAI sync/stream/async, Collection.rag and rag_stream over
//! a vector_search context, TransformerPipeline, Builtins) and psycopg 3
//! (`clients/psycopg_transform.py`: server-side text[] / jsonb[] parameters, DECLARE ... FETCH 1
//! in a transaction, a named cursor) and LlamaIndex's PostgresML index and query engine
//! (`clients/llamaindex_query.py`, in .venv-llamaindex: query, aquery, streaming). The scripts check what their client returned; this test
//! checks it again against what the server received for each call (endpoint, model, messages
//! with the context korvus put in, stream flag, max_tokens), found by a marker in each prompt.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pgml_integration_tests::openai_server::{
    chat_answer, completion_of, pieces_of, Knobs, OpenAiServer, Recorded,
};
use pgml_integration_tests::{run_tool, spawn_embedded, venv_python, workspace_dir, Proxy};
use serde_json::{json, Value};

/// The chat model korvus asks for; routed by the pattern `meta-llama/*`.
const LLM: &str = "meta-llama/Meta-Llama-3-8B-Instruct";
/// Same route; its server waits 200 ms between stream chunks.
const TRICKLE: &str = "meta-llama/trickle";
/// The bearer token the proxy reads from PGML_PROXY_REMOTE_TOKEN.
const TOKEN: &str = "sk-korvus-transform-token";
/// The scripts' system message and the context's join string (korvus_rag.py).
const SYSTEM: &str = "You are a terse assistant.";
const JOIN: &str = "\n--\n";
/// The document korvus's vector_search must put first into the context (korvus_rag.py).
const EIFFEL: &str = "The Eiffel Tower is a wrought-iron lattice tower in Paris.";

struct Setup {
    server: OpenAiServer,
    proxy: Proxy,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let server = OpenAiServer::start();
        server.set_knobs(
            TRICKLE,
            Knobs {
                chunk_delay: Duration::from_millis(200),
                ..Knobs::default()
            },
        );
        std::env::set_var("PGML_PROXY_REMOTE_TOKEN", TOKEN);
        let route = format!("meta-llama/*={}", server.url());
        let proxy = spawn_embedded(
            "korvus-transform",
            "pgdata-korvus-transform",
            &["--remote-model", &route],
        );
        Setup { server, proxy }
    })
}

/// Runs a client script with `env`; its `TAG {json}` line, or a failure with its output.
fn run_script(script: &str, tag: &str, env: &[(&str, &str)]) -> Value {
    run_script_in(&venv_python(), script, tag, env)
}

/// `run_script` with another interpreter (another venv).
fn run_script_in(python: &Path, script: &str, tag: &str, env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(
        workspace_dir()
            .join("integration-tests/clients")
            .join(script),
    )
    .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (ok, out, err) = run_tool(&mut cmd);
    assert!(ok, "{script} failed:\n{out}\n{err}");
    // Shown with --nocapture: the script's steps (and the stream's timings).
    println!("{out}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(tag))
        .unwrap_or_else(|| panic!("no {tag} line from {script}:\n{out}\n{err}"));
    serde_json::from_str(line.trim()).expect("the script's results are JSON")
}

/// The requests whose body holds `marker` followed by a space (markers are prefixes of
/// others: `tp-stream` and `tp-stream-batched`).
fn requests_with(marker: &str) -> Vec<Recorded> {
    let needle = format!("{marker} ");
    setup()
        .server
        .requests()
        .into_iter()
        .filter(|r| r.body.to_string().contains(&needle))
        .collect()
}

/// The one request carrying `marker`, checked for endpoint, model, stream flag, max_tokens
/// and the proxy's bearer token.
fn one_request(marker: &str, path: &str, stream: bool, max_tokens: u64) -> Recorded {
    let seen = requests_with(marker);
    assert_eq!(seen.len(), 1, "one request for {marker}: {seen:#?}");
    let r = seen.into_iter().next().unwrap();
    check_request(&r, marker, path, stream, max_tokens);
    r
}

fn check_request(r: &Recorded, marker: &str, path: &str, stream: bool, max_tokens: u64) {
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", path),
        "{marker}: {}",
        r.body
    );
    assert_eq!(r.model(), Some(LLM), "{marker}: {}", r.body);
    assert_eq!(r.body["stream"], json!(stream), "{marker}: {}", r.body);
    assert_eq!(
        r.body["max_tokens"],
        json!(max_tokens),
        "{marker}: {}",
        r.body
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "{marker}"
    );
}

fn messages(r: &Recorded) -> Vec<Value> {
    r.body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages in {}", r.body))
        .clone()
}

/// The one prompt of a /v1/completions request (a string, or an array of one).
fn prompt(r: &Recorded) -> String {
    match &r.body["prompt"] {
        Value::String(p) => p.clone(),
        Value::Array(ps) if ps.len() == 1 => ps[0].as_str().expect("a string prompt").to_owned(),
        other => panic!("one prompt in {other}"),
    }
}

/// The messages korvus_rag.py's `messages_for(marker)` builds.
fn script_messages(marker: &str) -> Value {
    json!([{"role": "system", "content": SYSTEM},
           {"role": "user", "content": format!("{marker} how many legs has a spider")}])
}

/// One `[piece]` row per piece.
fn rows_of(pieces: &[String]) -> Value {
    Value::Array(pieces.iter().map(|p| json!([p])).collect())
}

/// The delta contents of OpenSourceAI's stream chunks.
fn delta_contents(chunks: &Value) -> Vec<String> {
    chunks
        .as_array()
        .expect("a list of chunks")
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("delta content in {c}"))
                .to_owned()
        })
        .collect()
}

/// The context korvus put into a prompt is its vector_search's chunks joined with JOIN: the
/// same chunks as the sources it returned, the Eiffel Tower document among them.
fn check_context(context: &str, sources: Option<&Value>) {
    assert!(context.contains(EIFFEL), "the best document in {context:?}");
    assert_eq!(context.split(JOIN).count(), 2, "limit 2: {context:?}");
    if let Some(sources) = sources {
        let mut from_sources: Vec<&str> = sources
            .as_array()
            .expect("sources.CONTEXT is a list")
            .iter()
            .map(|s| s["chunk"].as_str().expect("a chunk"))
            .collect();
        let mut in_prompt: Vec<&str> = context.split(JOIN).collect();
        from_sources.sort_unstable();
        in_prompt.sort_unstable();
        assert_eq!(in_prompt, from_sources);
    }
}

#[test]
fn korvus_open_source_ai_rag_and_transformer_pipeline_reach_the_server_as_korvus_sent_them() {
    let url = setup().proxy.url();
    let got = run_script(
        "korvus_rag.py",
        "KORVUS_RESULTS",
        &[("KORVUS_DATABASE_URL", &url), ("KORVUS_LLM", LLM)],
    );

    // OpenSourceAI: chat completions, korvus's max_tokens and temperature, the messages as given.
    for (marker, key, stream, max_tokens, temperature) in [
        ("osai-sync", "osai_sync", false, 11, 0.25),
        ("osai-object", "osai_object", false, 15, 0.65),
        ("osai-stream-sync", "osai_stream_sync", true, 12, 0.35),
        ("osai-async", "osai_async", false, 13, 0.45),
        ("osai-stream-async", "osai_stream_async", true, 14, 0.55),
    ] {
        let r = one_request(marker, "/v1/chat/completions", stream, max_tokens);
        assert_eq!(Value::Array(messages(&r)), script_messages(marker));
        assert_eq!(r.body["temperature"], json!(temperature), "{}", r.body);
        let answer = chat_answer(&messages(&r));
        if stream {
            assert_eq!(delta_contents(&got[key]), pieces_of(&answer), "{key}");
        } else {
            assert_eq!(got[key]["choices"][0]["message"]["content"], json!(answer));
            assert_eq!(got[key]["model"], json!(LLM));
        }
    }

    // The model object's other keys are PostgresML pipeline options in the task, not
    // generation args: they do not reach the server.
    let r = one_request("osai-object", "/v1/chat/completions", false, 15);
    assert_eq!(r.body.get("device_map"), None, "{}", r.body);

    // Collection.rag with a completion: the prompt is korvus's template with the vector_search
    // context in it, and `rag` is the server's answer to that prompt.
    let r = one_request("rag-completion", "/v1/completions", false, 21);
    let sent = prompt(&r);
    let context = sent
        .strip_prefix("rag-completion Answer from: ")
        .unwrap_or_else(|| panic!("korvus's template: {sent:?}"));
    check_context(context, Some(&got["rag_completion"]["sources"]["CONTEXT"]));
    assert_eq!(got["rag_completion"]["rag"], json!([completion_of(&sent)]));
    // korvus sends its own defaults for what the query leaves out.
    assert_eq!(r.body["temperature"], json!(0.5), "{}", r.body);
    assert_eq!(r.body["top_p"], json!(1.0), "{}", r.body);

    // Collection.rag with chat: only the message naming {CONTEXT} gets the context.
    let r = one_request("rag-chat", "/v1/chat/completions", false, 22);
    let sent = messages(&r);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], json!({"role": "system", "content": SYSTEM}));
    assert_eq!(sent[1]["role"], json!("user"));
    let content = sent[1]["content"].as_str().expect("user content");
    let context = content
        .strip_prefix("rag-chat Given ")
        .and_then(|c| c.strip_suffix(" where is the tower?"))
        .unwrap_or_else(|| panic!("korvus's template: {content:?}"));
    check_context(context, Some(&got["rag_chat"]["sources"]["CONTEXT"]));
    assert_eq!(got["rag_chat"]["rag"], json!([chat_answer(&sent)]));

    // Collection.rag_stream: the pieces in the server's order, one [piece] per FETCH 1.
    let r = one_request("rag-stream-completion", "/v1/completions", true, 23);
    let sent = prompt(&r);
    check_context(
        sent.strip_prefix("rag-stream-completion ")
            .expect("template"),
        None,
    );
    assert_eq!(
        got["rag_stream_completion"],
        rows_of(&pieces_of(&completion_of(&sent)))
    );
    let r = one_request("rag-stream-chat", "/v1/chat/completions", true, 24);
    let sent = messages(&r);
    let content = sent[0]["content"].as_str().expect("user content");
    check_context(
        content
            .strip_prefix("rag-stream-chat ")
            .and_then(|c| c.strip_suffix(" where?"))
            .expect("template"),
        None,
    );
    assert_eq!(
        got["rag_stream_chat"],
        rows_of(&pieces_of(&chat_answer(&sent)))
    );

    // TransformerPipeline: max_new_tokens renamed by korvus, one request per text input.
    let seen = requests_with("tp-transform");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for r in &seen {
        check_request(r, "tp-transform", "/v1/completions", false, 5);
    }
    assert_eq!(
        got["tp_transform"],
        json!([
            completion_of("tp-transform one"),
            completion_of("tp-transform two")
        ])
    );
    let r = one_request("tp-chat", "/v1/chat/completions", false, 6);
    assert_eq!(Value::Array(messages(&r)), script_messages("tp-chat"));
    assert_eq!(got["tp_chat"], json!([chat_answer(&messages(&r))]));
    let r = one_request("tp-stream", "/v1/completions", true, 7);
    assert_eq!(
        got["tp_stream"],
        rows_of(&pieces_of(&completion_of(&prompt(&r))))
    );
    let r = one_request("tp-stream-batched", "/v1/completions", true, 8);
    let pieces = pieces_of(&completion_of(&prompt(&r)));
    assert_eq!(
        got["tp_stream_batched"],
        json!(pieces.chunks(2).collect::<Vec<_>>())
    );
    let r = one_request("tp-chat-stream", "/v1/chat/completions", true, 9);
    assert_eq!(
        got["tp_chat_stream"],
        rows_of(&pieces_of(&chat_answer(&messages(&r))))
    );

    // Builtins.transform: a text task, the model from args.
    let r = one_request("builtins-transform", "/v1/completions", false, 10);
    assert_eq!(
        got["builtins_transform"],
        json!([completion_of(&prompt(&r))])
    );
}

#[test]
fn psycopg_server_side_parameters_and_a_cursor_fetched_one_row_at_a_time() {
    let url = setup().proxy.url();
    let got = run_script(
        "psycopg_transform.py",
        "PSYCOPG_RESULTS",
        &[
            ("PGML_DATABASE_URL", &url),
            ("PGML_LLM", LLM),
            ("PGML_TRICKLE_LLM", TRICKLE),
        ],
    );

    // text[] bound as a parameter: one request per input, args mapped, answers in input order.
    let seen = requests_with("psycopg text");
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for r in &seen {
        check_request(r, "psycopg text", "/v1/completions", false, 31);
        assert_eq!(r.body["temperature"], json!(0.2), "{}", r.body);
    }
    let mut prompts: Vec<String> = seen.iter().map(prompt).collect();
    prompts.sort();
    assert_eq!(
        prompts,
        ["psycopg text one", "psycopg text three", "psycopg text two"]
    );
    assert_eq!(
        got["text_array"],
        json!(["psycopg text one", "psycopg text two", "psycopg text three"].map(completion_of))
    );

    let seen = requests_with("psycopg typed");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for r in &seen {
        check_request(r, "psycopg typed", "/v1/completions", false, 30);
    }
    assert_eq!(
        got["typed_text_array"],
        json!(["psycopg typed four", "psycopg typed five"].map(completion_of))
    );

    // jsonb[] bound as a parameter: one chat request with the messages as given.
    let r = one_request("psycopg chat", "/v1/chat/completions", false, 32);
    assert_eq!(
        Value::Array(messages(&r)),
        json!([{"role": "system", "content": SYSTEM},
               {"role": "user", "content": "psycopg chat what is two plus two"}])
    );
    assert_eq!(got["jsonb_array"], json!([chat_answer(&messages(&r))]));

    // A prepared statement run twice calls the server twice.
    let seen = requests_with("psycopg prepared");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for r in &seen {
        check_request(r, "psycopg prepared", "/v1/completions", false, 33);
        let sent = prompt(r);
        let n = sent
            .strip_prefix("psycopg prepared ")
            .expect("the script's prompt");
        assert_eq!(got[format!("prepared_{n}")], json!([completion_of(&sent)]));
    }

    // Streams: DECLARE ... FETCH 1 (text and chat), psycopg's named cursor, a plain SELECT.
    let r = one_request("psycopg stream", "/v1/completions", true, 34);
    assert_eq!(
        got["cursor_text"],
        rows_of(&pieces_of(&completion_of(&prompt(&r))))
    );
    let r = one_request("psycopg cursor chat", "/v1/chat/completions", true, 35);
    assert_eq!(
        got["cursor_chat"],
        rows_of(&pieces_of(&chat_answer(&messages(&r))))
    );
    let r = one_request("psycopg named cursor", "/v1/completions", true, 36);
    assert_eq!(
        got["named_cursor"],
        rows_of(&pieces_of(&completion_of(&prompt(&r))))
    );
    let seen = requests_with("psycopg plain select");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].body["stream"], json!(true));
    assert_eq!(
        got["plain_select"],
        rows_of(&pieces_of(&completion_of(&prompt(&seen[0]))))
    );

    // The trickled stream (200 ms between chunks): FETCH 1 returns the first piece while the
    // server is still sending the rest, not after the whole answer.
    let seen = requests_with("psycopg trickle");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        (seen[0].model(), &seen[0].body["stream"]),
        (Some(TRICKLE), &json!(true))
    );
    let trickle = &got["trickle"];
    let expected = pieces_of(&completion_of("psycopg trickle p q r s t"));
    assert_eq!(trickle["rows"], rows_of(&expected));
    let seconds: Vec<f64> = trickle["seconds"]
        .as_array()
        .expect("times")
        .iter()
        .map(|s| s.as_f64().expect("seconds"))
        .collect();
    let (first, last) = (seconds[0], seconds[seconds.len() - 1]);
    assert!(
        last - first > 0.2 * (expected.len() - 2) as f64,
        "the first row came {first:.3} s after DECLARE, the last {last:.3} s: {seconds:?}"
    );
}

#[test]
fn llamaindex_postgresml_query_engine_queries_and_streams_through_the_proxy() {
    let python = workspace_dir().join(".venv-llamaindex/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup_llamaindex.sh (`make test` does)",
        python.display()
    );
    let url = setup().proxy.url();
    let got = run_script_in(
        &python,
        "llamaindex_query.py",
        "LLAMAINDEX_RESULTS",
        &[("PGML_DATABASE_URL", &url)],
    );
    assert_eq!(got["retrieved"], json!([EIFFEL]));
    // The query engine's chat: LlamaIndex's system prompt, then its user prompt with the
    // retrieved context and the query; model_parameters' max_tokens (its default 2048 for the
    // streaming engine); the answer LlamaIndex returned is the server's.
    for (marker, key, stream, max_tokens) in [
        ("li-query", "query", false, 40),
        ("li-aquery", "aquery", false, 40),
        ("li-stream", "stream", true, 2048),
    ] {
        let r = one_request(marker, "/v1/chat/completions", stream, max_tokens);
        let sent = messages(&r);
        assert_eq!(sent.len(), 2, "{marker}: {sent:?}");
        assert_eq!(
            sent[0],
            json!({"role": "system", "content": "You are a helpful chatbot"})
        );
        let user = sent[1]["content"].as_str().unwrap_or_default();
        assert_eq!(sent[1]["role"], json!("user"), "{marker}");
        assert!(user.contains(EIFFEL), "{marker}: the context in {user:?}");
        assert!(
            user.contains(&format!("Query: {marker} ")),
            "{marker}: the query in {user:?}"
        );
        let answer = chat_answer(&sent);
        let returned = match &got[key] {
            Value::String(text) => text.clone(),
            Value::Array(pieces) => {
                let pieces: Vec<String> = pieces
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect();
                assert_eq!(
                    pieces
                        .iter()
                        .filter(|p| !p.is_empty())
                        .cloned()
                        .collect::<Vec<_>>(),
                    pieces_of(&answer),
                    "{marker}: streamed word by word"
                );
                pieces.concat()
            }
            other => panic!("{marker}: {other}"),
        };
        assert_eq!(returned, answer, "{marker}");
    }
}
