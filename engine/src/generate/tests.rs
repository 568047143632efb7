//! `Generator` against `test_server`: what is sent (endpoint, body, token), what comes back
//! (shapes, order, streamed pieces), errors and their SQLSTATEs, cancellation, routing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::test_server::{chat_event, text_event, Recorded, Reply, TestServer};
use super::*;

fn config() -> RemoteConfig {
    RemoteConfig {
        timeout: Duration::from_secs(5),
        retries: 1,
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..RemoteConfig::default()
    }
}

fn args(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("args must be an object, got {other}"),
    }
}

fn request(model: &str, task: GenerateTask, inputs: Vec<Value>, a: Value) -> GenerateRequest {
    GenerateRequest {
        model: Some(model.to_string()),
        task,
        inputs,
        args: args(a),
        cache: false,
    }
}

fn ok(body: Value) -> Reply {
    Reply::Json {
        status: 200,
        body,
        delay: Duration::ZERO,
    }
}

/// Completions answer `<prompt>`; chat answers the last message's content upper-cased.
fn echo(r: &Recorded) -> Reply {
    if r.path.ends_with("/chat/completions") {
        let last = r.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_uppercase();
        ok(json!({"object": "chat.completion", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": last}, "finish_reason": "stop"}]}))
    } else {
        let prompt = r.body["prompt"].as_str().unwrap_or_default();
        ok(json!({"object": "text_completion", "choices": [{"index": 0,
            "text": format!("<{prompt}>"), "finish_reason": "stop"}]}))
    }
}

fn generator(server: &TestServer, name: &str) -> Generator {
    Generator::new(vec![(name.to_string(), server.base())], config()).unwrap()
}

async fn collect(
    mut rx: mpsc::Receiver<Result<String, EngineError>>,
) -> (Vec<String>, Option<EngineError>) {
    let mut pieces = Vec::new();
    while let Some(item) = rx.recv().await {
        match item {
            Ok(piece) => pieces.push(piece),
            Err(e) => return (pieces, Some(e)),
        }
    }
    (pieces, None)
}

#[tokio::test]
async fn completions_body_has_the_model_prompt_mapped_args_stream_false_and_the_token() {
    let server = TestServer::start(echo);
    let generator = Generator::new(
        vec![("org/m".into(), server.base())],
        RemoteConfig {
            token: Some("sekrit".into()),
            ..config()
        },
    )
    .unwrap();
    let result = generator
        .transform(request(
            "org/m",
            GenerateTask::TextGeneration,
            vec![json!("Once upon")],
            json!({"max_new_tokens": 7, "top_k": 40, "model": "org/m", "do_sample": false}),
        ))
        .await
        .unwrap();
    assert_eq!(result, json!(["<Once upon>"]));
    let seen = server.seen.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/completions")
    );
    assert_eq!(
        seen[0].body,
        json!({"model": "org/m", "prompt": "Once upon", "max_tokens": 7, "top_k": 40,
               "temperature": 0, "stream": false})
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer sekrit"));
}

#[tokio::test]
async fn chat_sends_the_messages_and_returns_the_assistant_text() {
    let server = TestServer::start(echo);
    let messages = vec![
        json!({"role": "system", "content": "be brief"}),
        json!({"role": "user", "content": "hello there"}),
    ];
    let result = generator(&server, "chat-model")
        .transform(request(
            "chat-model",
            GenerateTask::Chat,
            messages.clone(),
            json!({"max_tokens": 3}),
        ))
        .await
        .unwrap();
    assert_eq!(result, json!(["HELLO THERE"]));
    let seen = server.seen.requests();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].body,
        json!({"model": "chat-model", "messages": messages, "max_tokens": 3, "stream": false})
    );
    assert_eq!(seen[0].header("authorization"), None);
}

/// Prompt `p{i}` is answered after (8 - i) * 40 ms, so the last finish first.
fn slow_echo(r: &Recorded) -> Reply {
    let prompt = r.body["prompt"].as_str().unwrap_or_default().to_string();
    let i: u64 = prompt.trim_start_matches('p').parse().unwrap_or(0);
    Reply::Json {
        status: 200,
        body: json!({"choices": [{"index": 0, "text": format!("<{prompt}>"), "finish_reason": "stop"}]}),
        delay: Duration::from_millis((8 - i) * 40),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_generation_answers_keep_input_order_while_requests_run_concurrently() {
    let server = TestServer::start(slow_echo);
    let prompts: Vec<Value> = (0..8).map(|i| json!(format!("p{i}"))).collect();
    let started = Instant::now();
    let result = generator(&server, "m")
        .transform(request(
            "m",
            GenerateTask::TextGeneration,
            prompts,
            json!({}),
        ))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let expected: Vec<String> = (0..8).map(|i| format!("<p{i}>")).collect();
    assert_eq!(result, json!(expected));
    // Serially: 40 * (8 + 7 + ... + 1) = 1440 ms; concurrently about the slowest, 320 ms.
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    assert!(server.seen.max_in_flight.load(Ordering::SeqCst) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_calls_to_one_server_are_not_serialised() {
    let server = TestServer::start(|_| Reply::Json {
        status: 200,
        body: json!({"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}),
        delay: Duration::from_millis(50),
    });
    let generator = generator(&server, "m");
    let started = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..32 {
        let generator = generator.clone();
        calls.spawn(async move {
            generator
                .transform(request(
                    "m",
                    GenerateTask::TextGeneration,
                    vec![json!(format!("session {i}"))],
                    json!({}),
                ))
                .await
        });
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(done.unwrap().unwrap(), json!(["ok"]));
    }
    let elapsed = started.elapsed();
    let serial = Duration::from_millis(32 * 50);
    println!(
        "32 concurrent calls, 50 ms each: {elapsed:?}, {:.1}x faster than serial",
        serial.as_secs_f64() / elapsed.as_secs_f64()
    );
    assert!(elapsed < serial / 4, "{elapsed:?}");
    assert_eq!(server.seen.max_in_flight.load(Ordering::SeqCst), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_per_server_are_bounded() {
    let server = TestServer::start(slow_echo);
    let generator =
        Generator::with_in_flight(vec![("m".into(), server.base())], config(), 2).unwrap();
    let prompts: Vec<Value> = (0..8).map(|i| json!(format!("p{i}"))).collect();
    let result = generator
        .transform(request(
            "m",
            GenerateTask::TextGeneration,
            prompts,
            json!({}),
        ))
        .await
        .unwrap();
    assert_eq!(result.as_array().map(Vec::len), Some(8));
    assert_eq!(server.seen.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stream_pieces_arrive_in_order_skipping_keep_alives_and_empty_pieces() {
    let server = TestServer::start(|_| Reply::Events {
        events: vec![
            ": keep-alive\n\n".into(),
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n".into(),
            chat_event("Hel"),
            chat_event(""),
            chat_event("lo"),
            chat_event(" world"),
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
                .into(),
            "data: [DONE]\n\n".into(),
        ],
        gap: Duration::from_millis(5),
    });
    let messages = vec![json!({"role": "user", "content": "hi"})];
    let rx = generator(&server, "m")
        .transform_stream(request(
            "m",
            GenerateTask::Chat,
            messages,
            json!({"seed": 1}),
        ))
        .await
        .unwrap();
    let (pieces, error) = collect(rx).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(pieces, vec!["Hel", "lo", " world"]);
    let seen = server.seen.requests();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].body["stream"], json!(true));
    assert_eq!(seen[0].body["seed"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_piece_reaches_the_receiver_before_the_next_one_is_written() {
    let server = TestServer::start(|_| Reply::Events {
        events: vec![
            text_event("first", None),
            text_event(" second", Some("stop")),
            "data: [DONE]\n\n".into(),
        ],
        // The first chunk comes well after the stream opened, as a model's would.
        gap: Duration::from_millis(200),
    });
    let mut rx = generator(&server, "m")
        .transform_stream(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("x")],
            json!({}),
        ))
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap(), "first");
    let received = Instant::now();
    let written = server
        .seen
        .first_event_at
        .lock()
        .unwrap()
        .expect("the first event was written");
    let lag = received.saturating_duration_since(written);
    println!("first streamed piece: {lag:?} after the server wrote it");
    // Well under the 200 ms until the next piece: passed on as it came, not held for more
    // (the 10 ms target is `make bench-transform`'s; a loaded test machine may miss it).
    assert!(lag < Duration::from_millis(150), "{lag:?}");
    // The second piece is not there yet: pieces are passed on as they come, not collected.
    assert!(rx.try_recv().is_err());
    assert_eq!(rx.recv().await.unwrap().unwrap(), " second");
}

#[tokio::test]
async fn a_completions_stream_may_end_at_its_finish_reason_without_done() {
    let server = TestServer::start(|_| Reply::Events {
        events: vec![
            text_event("Once", None),
            text_event(" more", Some("length")),
        ],
        gap: Duration::ZERO,
    });
    let rx = generator(&server, "m")
        .transform_stream(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("first"), json!("ignored")],
            json!({}),
        ))
        .await
        .unwrap();
    let (pieces, error) = collect(rx).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(pieces, vec!["Once", " more"]);
    let seen = server.seen.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/completions");
    assert_eq!(seen[0].body["prompt"], json!("first"));
}

#[tokio::test]
async fn a_stream_cut_before_done_or_a_finish_is_a_58000_error_after_its_pieces() {
    let server = TestServer::start(|_| Reply::Events {
        events: vec![text_event("one", None), text_event(" two", None)],
        gap: Duration::ZERO,
    });
    let rx = generator(&server, "m")
        .transform_stream(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("x")],
            json!({}),
        ))
        .await
        .unwrap();
    let (pieces, error) = collect(rx).await;
    assert_eq!(pieces, vec!["one", " two"]);
    let error = error.expect("an error after the pieces");
    assert_eq!(error.sqlstate(), "58000");
    assert!(error.to_string().contains("ended before"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_closes_the_connection_and_the_server_stops_writing() {
    let events: Vec<String> = (0..500).map(|i| chat_event(&format!("t{i} "))).collect();
    let server = TestServer::start(move |_| Reply::Events {
        events: events.clone(),
        gap: Duration::from_millis(10),
    });
    let messages = vec![json!({"role": "user", "content": "go on forever"})];
    let mut rx = generator(&server, "m")
        .transform_stream(request("m", GenerateTask::Chat, messages, json!({})))
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap(), "t0 ");
    assert_eq!(rx.recv().await.unwrap().unwrap(), "t1 ");
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.seen.write_failures.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.seen.write_failures.load(Ordering::SeqCst), 1);
    let written = server.seen.events_written.load(Ordering::SeqCst);
    assert!(written < 100, "the server wrote {written} events");
}

#[tokio::test]
async fn open_streams_are_bounded_and_a_finished_one_frees_its_place() {
    let events: Vec<String> = (0..500).map(|i| chat_event(&format!("t{i} "))).collect();
    let server = TestServer::start(move |_| Reply::Events {
        events: events.clone(),
        gap: Duration::from_millis(10),
    });
    let generator = generator(&server, "m").with_max_open_streams(2);
    let open = || {
        let messages = vec![json!({"role": "user", "content": "go on"})];
        generator.transform_stream(request("m", GenerateTask::Chat, messages, json!({})))
    };
    let mut first = open().await.unwrap();
    let _second = open().await.unwrap();
    let err = open().await.expect_err("a third stream over the bound");
    assert_eq!(err.sqlstate(), "53300", "{err}");
    assert!(err.to_string().contains("2 streams are open"), "{err}");
    assert_eq!(first.recv().await.unwrap().unwrap(), "t0 ");
    drop(first);
    // The first stream's thread ends at its next send and gives its place back.
    let deadline = Instant::now() + Duration::from_secs(3);
    let third = loop {
        match open().await {
            Ok(rx) => break rx,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.sqlstate(), "53300", "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the first stream's place was not given back: {e}"),
        }
    };
    drop(third);
}

#[tokio::test]
async fn a_stalled_stream_is_a_57014_timeout() {
    let server = TestServer::start(|_| Reply::Stall(Duration::from_secs(3)));
    let generator = Generator::new(
        vec![("m".into(), server.base())],
        RemoteConfig {
            timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .unwrap();
    let started = Instant::now();
    let rx = generator
        .transform_stream(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("x")],
            json!({}),
        ))
        .await
        .unwrap();
    let (pieces, error) = collect(rx).await;
    assert!(pieces.is_empty());
    let error = error.expect("a timeout");
    assert_eq!(error.sqlstate(), "57014", "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_stream_is_retried_after_a_503_before_its_first_byte() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let server = TestServer::start(move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Json {
                status: 503,
                body: json!({"error": {"message": "warming up"}}),
                delay: Duration::ZERO,
            }
        } else {
            Reply::Events {
                events: vec![text_event("ok", Some("stop")), "data: [DONE]\n\n".into()],
                gap: Duration::ZERO,
            }
        }
    });
    let rx = generator(&server, "m")
        .transform_stream(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("x")],
            json!({}),
        ))
        .await
        .unwrap();
    let (pieces, error) = collect(rx).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(pieces, vec!["ok"]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_http_error_carries_the_status_and_the_servers_message() {
    let server = TestServer::start(|r| {
        let status = if r.body["prompt"] == json!("bad") {
            400
        } else {
            500
        };
        Reply::Json {
            status,
            body: json!({"error": {"message": format!("failure {status} here"),
                                   "type": "server_error", "code": status}}),
            delay: Duration::ZERO,
        }
    });
    let generator = generator(&server, "m");
    let error = generator
        .transform(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("x")],
            json!({}),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), "58000");
    let text = error.to_string();
    assert!(text.contains("HTTP 500"), "{text}");
    assert!(text.contains("failure 500 here"), "{text}");
    assert!(text.contains("/v1/completions"), "{text}");
    // 5xx is retried (config: 1 retry); 4xx is not.
    assert_eq!(server.seen.requests().len(), 2);
    let error = generator
        .transform(request(
            "m",
            GenerateTask::TextGeneration,
            vec![json!("bad")],
            json!({}),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), "22023");
    assert!(error.to_string().contains("failure 400 here"), "{error}");
    assert_eq!(server.seen.requests().len(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_58000_after_its_retries() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let generator = Generator::new(
        vec![(
            "m".into(),
            format!("http://user:hunter2@127.0.0.1:{port}/v1"),
        )],
        config(),
    )
    .unwrap();
    let error = generator
        .transform(request(
            "m",
            GenerateTask::Chat,
            vec![json!({"role": "user", "content": "x"})],
            json!({}),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), "58000");
    assert!(error.to_string().contains("2 attempt(s)"), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[tokio::test]
async fn no_route_names_the_model_and_the_flag_with_42704() {
    let error = Generator::none()
        .transform(request(
            "meta-llama/Llama-3.1-8B",
            GenerateTask::TextGeneration,
            vec![json!("x")],
            json!({}),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate(), "42704");
    let text = error.to_string();
    assert!(text.contains("\"meta-llama/Llama-3.1-8B\""), "{text}");
    assert!(
        text.contains("--remote-model 'meta-llama/Llama-3.1-8B=http://HOST:PORT/v1'"),
        "{text}"
    );
    let mut unnamed = request(
        "x",
        GenerateTask::TextGeneration,
        vec![json!("x")],
        json!({}),
    );
    unnamed.model = None;
    let error = Generator::none().transform(unnamed).await.unwrap_err();
    assert_eq!(error.sqlstate(), "42704");
    assert!(error.to_string().contains("--remote-model '*="), "{error}");
}

#[tokio::test]
async fn routes_pick_exact_then_the_longest_pattern_then_star() {
    let servers: Vec<TestServer> = (0..4).map(|_| TestServer::start(echo)).collect();
    let generator = Generator::new(
        vec![
            ("*".into(), servers[0].base()),
            ("meta-llama/*".into(), servers[1].base()),
            ("meta-llama/Llama-3*".into(), servers[2].base()),
            ("meta-llama/Llama-3-exact".into(), servers[3].base()),
            ("intfloat/e5".into(), "tei+http://127.0.0.1:9".into()),
        ],
        config(),
    )
    .unwrap();
    assert_eq!(generator.routes().len(), 4, "tei+ routes do not generate");
    for (model, server) in [
        ("meta-llama/Llama-3-exact", 3),
        ("meta-llama/Llama-3.1-8B", 2),
        ("meta-llama/Llama-2-7b", 1),
        ("mistralai/Mistral-7B", 0),
        ("intfloat/e5", 0),
    ] {
        generator
            .transform(request(
                model,
                GenerateTask::TextGeneration,
                vec![json!("x")],
                json!({}),
            ))
            .await
            .unwrap();
        let last = servers[server].seen.requests().pop().expect("a request");
        assert_eq!(last.body["model"], json!(model), "{model}");
    }
    let total: usize = servers.iter().map(|s| s.seen.requests().len()).sum();
    assert_eq!(total, 5);
    // No model named: the "*" route, and the server's own default model.
    let mut unnamed = request(
        "x",
        GenerateTask::TextGeneration,
        vec![json!("x")],
        json!({}),
    );
    unnamed.model = None;
    generator.transform(unnamed).await.unwrap();
    let last = servers[0].seen.requests().pop().expect("a request");
    assert!(last.body.get("model").is_none(), "{}", last.body);
}

#[tokio::test]
async fn bad_inputs_are_refused_before_sending() {
    let server = TestServer::start(echo);
    let generator = generator(&server, "m");
    let too_many: Vec<Value> = (0..=MAX_GENERATE_INPUTS).map(|_| json!("x")).collect();
    for (req, state) in [
        (
            request("m", GenerateTask::TextGeneration, too_many, json!({})),
            "54000",
        ),
        (
            request("m", GenerateTask::TextGeneration, vec![json!(5)], json!({})),
            "22023",
        ),
        (request("m", GenerateTask::Chat, vec![], json!({})), "22023"),
        (
            request("m", GenerateTask::Chat, vec![json!("hi")], json!({})),
            "22023",
        ),
        (
            request(
                "m",
                GenerateTask::TextGeneration,
                vec![json!("x")],
                json!({"max_tokens": 0}),
            ),
            "22023",
        ),
    ] {
        let error = generator.transform(req).await.unwrap_err();
        assert_eq!(error.sqlstate(), state, "{error}");
    }
    assert!(server.seen.requests().is_empty());
    let empty = generator
        .transform(request(
            "m",
            GenerateTask::TextGeneration,
            vec![],
            json!({}),
        ))
        .await
        .unwrap();
    assert_eq!(empty, json!([]));
}

#[tokio::test]
async fn with_cache_a_repeated_call_is_answered_from_memory_and_without_it_never() {
    let server = TestServer::start(echo);
    let answering = generator(&server, "org/m");
    let call = |cache: bool, prompt: &str, a: Value| GenerateRequest {
        cache,
        ..request(
            "org/m",
            GenerateTask::TextGeneration,
            vec![json!(prompt)],
            a,
        )
    };
    for _ in 0..3 {
        let answer = answering
            .transform(call(true, "cached", json!({"max_new_tokens": 5})))
            .await
            .unwrap();
        assert_eq!(answer, json!(["<cached>"]));
    }
    assert_eq!(
        server.seen.requests().len(),
        1,
        "asked once, then served from memory"
    );
    // Other args, another prompt, or no cache: the server is asked.
    answering
        .transform(call(true, "cached", json!({"max_new_tokens": 6})))
        .await
        .unwrap();
    answering
        .transform(call(true, "other", json!({"max_new_tokens": 5})))
        .await
        .unwrap();
    for _ in 0..2 {
        answering
            .transform(call(false, "cached", json!({"max_new_tokens": 5})))
            .await
            .unwrap();
    }
    assert_eq!(server.seen.requests().len(), 5);
    // An error is not kept.
    let failing = TestServer::start(|_| Reply::Json {
        status: 400,
        body: json!({"error": {"message": "no"}}),
        delay: Duration::ZERO,
    });
    let refusing = generator(&failing, "org/m");
    for _ in 0..2 {
        assert!(refusing
            .transform(call(true, "cached", json!({})))
            .await
            .is_err());
    }
    assert_eq!(failing.seen.requests().len(), 2);
}
