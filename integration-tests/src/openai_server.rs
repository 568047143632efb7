//! An OpenAI-compatible HTTP/1.1 server for the tests, on 127.0.0.1:0 (its own thread and
//! runtime, alive until the test binary exits): `POST /v1/completions` and
//! `/v1/chat/completions` (JSON, or server-sent events with `"stream": true`), `GET /v1/models`
//! and `POST /v1/embeddings`, in the request and response shapes of OpenAI's API reference.
//! Answers are derived from the request, so a test can predict them: a completion is its
//! prompt reversed, a chat answer `echo: <last user message>`, streamed word by word. Knobs,
//! per model name or for the whole server: a delay before answering and between stream
//! chunks, an HTTP error status with OpenAI's error body, and vanishing (closing the socket)
//! after K stream chunks. Every request is recorded (method, path, headers, JSON body), and
//! when each stream chunk was written (for latency measurements such as bench_transform).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Most bytes of a request head or body the server reads.
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// Dimensions of the embeddings the server makes up.
pub const EMBEDDING_DIMS: usize = 8;

/// How the server answers calls for one model (or every model without knobs of its own).
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Waited before the answer's first byte.
    pub delay: Duration,
    /// Waited before each streamed chunk after the first.
    pub chunk_delay: Duration,
    /// Answer with this HTTP status and OpenAI's error body carrying this message.
    pub fail: Option<(u16, String)>,
    /// Close the socket after this many stream chunks (0: before any answer, streamed or not).
    pub vanish_after: Option<usize>,
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (Null when empty or not JSON).
    pub body: Value,
}

impl Recorded {
    /// The first header of that (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's "model".
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }
}

/// One stream chunk as the server wrote it.
#[derive(Debug, Clone)]
pub struct Written {
    /// The request body's "model".
    pub model: String,
    /// The chunk's position in its stream, from 0 (chat: 0 is the role-only delta).
    pub chunk: usize,
    /// When its write to the socket returned (flushed).
    pub at: Instant,
}

#[derive(Default)]
struct State {
    knobs: Mutex<HashMap<String, Knobs>>,
    default: Mutex<Knobs>,
    recorded: Mutex<Vec<Recorded>>,
    written: Mutex<Vec<Written>>,
    /// Per model: requests being answered now, and the most at once so far.
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
}

/// Counts one request of `model` as being answered until dropped.
struct InFlight {
    state: Arc<State>,
    model: String,
}

impl InFlight {
    fn start(state: &Arc<State>, model: &str) -> InFlight {
        let mut counts = state.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (now, most) = counts.entry(model.to_owned()).or_default();
        *now += 1;
        *most = (*most).max(*now);
        InFlight {
            state: Arc::clone(state),
            model: model.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((now, _)) = counts.get_mut(&self.model) {
            *now = now.saturating_sub(1);
        }
    }
}

impl State {
    fn knobs_for(&self, model: Option<&str>) -> Knobs {
        let per_model = self.knobs.lock().unwrap_or_else(|e| e.into_inner());
        match model.and_then(|m| per_model.get(m)) {
            Some(k) => k.clone(),
            None => self
                .default
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A running server.
pub struct OpenAiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl OpenAiServer {
    /// Starts a server on a free port of 127.0.0.1, serving until the process exits.
    pub fn start() -> OpenAiServer {
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let (ready, started) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the test server's runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                ready
                    .send(listener.local_addr().expect("addr"))
                    .expect("report the address");
                while let Ok((stream, _)) = listener.accept().await {
                    // As streaming servers do: a chunk written after the head would otherwise
                    // wait for the head's delayed ACK (~40 ms) on a new connection.
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let _ = serve(stream, state).await;
                    });
                }
            });
        });
        let addr = started.recv().expect("the test server started");
        OpenAiServer { addr, state }
    }

    /// The API base, as `--remote-model NAME=URL` takes it.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sets how calls for `model` are answered.
    pub fn set_knobs(&self, model: &str, knobs: Knobs) {
        self.state
            .knobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.to_owned(), knobs);
    }

    /// Sets how calls for models without knobs of their own are answered.
    pub fn set_default_knobs(&self, knobs: Knobs) {
        *self.state.default.lock().unwrap_or_else(|e| e.into_inner()) = knobs;
    }

    /// Every request so far, in the order read.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every stream chunk written so far, in the order written.
    pub fn chunks_written(&self) -> Vec<Written> {
        self.state
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The most requests naming `model` that the server was answering at once (from reading
    /// the request to writing the answer's last byte).
    pub fn max_in_flight(&self, model: &str) -> usize {
        self.state
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .map_or(0, |&(_, most)| most)
    }

    /// The requests whose body names `model`, in arrival order.
    pub fn requests_for(&self, model: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.model() == Some(model))
            .collect()
    }
}

/// One request's head and body, or None at a clean end of the connection.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves the connection's requests in turn (HTTP/1.1 keep-alive) until the client closes it
/// or a knob ends it.
async fn serve(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buffered = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buffered).await? else {
            return Ok(());
        };
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        state
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Recorded {
                method: request.method.clone(),
                path: request.path.clone(),
                headers: request.headers.clone(),
                body: body.clone(),
            });
        let close = request
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let knobs = state.knobs_for(body.get("model").and_then(Value::as_str));
        let _answering = InFlight::start(&state, &model_of(&body));
        if knobs.vanish_after == Some(0) {
            return Ok(());
        }
        tokio::time::sleep(knobs.delay).await;
        if let Some((status, message)) = &knobs.fail {
            let error = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
            write_json(&mut stream, *status, &error).await?;
        } else {
            let path = request.path.split('?').next().unwrap_or_default();
            let streamed = body.get("stream").and_then(Value::as_bool) == Some(true);
            match (request.method.as_str(), path) {
                ("POST", "/v1/chat/completions") if streamed => {
                    if !stream_answer(&mut stream, &body, true, &knobs, &state).await? {
                        return Ok(());
                    }
                }
                ("POST", "/v1/completions") if streamed => {
                    if !stream_answer(&mut stream, &body, false, &knobs, &state).await? {
                        return Ok(());
                    }
                }
                ("POST", "/v1/chat/completions") => {
                    let (status, answer) = chat(&body);
                    write_json(&mut stream, status, &answer).await?;
                }
                ("POST", "/v1/completions") => {
                    let (status, answer) = completions(&body);
                    write_json(&mut stream, status, &answer).await?;
                }
                ("POST", "/v1/embeddings") => {
                    let (status, answer) = embeddings(&body);
                    write_json(&mut stream, status, &answer).await?;
                }
                ("GET", "/v1/models") => write_json(&mut stream, 200, &models(&state)).await?,
                _ => {
                    let error = json!({"error": {"message": format!("no route {} {path}", request.method), "type": "invalid_request_error", "param": null, "code": null}});
                    write_json(&mut stream, 404, &error).await?;
                }
            }
        }
        if close {
            return Ok(());
        }
    }
}

async fn read_request(
    stream: &mut TcpStream,
    buffered: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let head_end = loop {
        if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffered.len() > MAX_REQUEST {
            return Err(bad("request head too large"));
        }
        if stream.read_buf(buffered).await? == 0 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    buffered.drain(..head_end);
    let mut request = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        // Chunked body: size line, data, CRLF ... until a zero size.
        loop {
            let line_end = loop {
                if let Some(at) = buffered.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                if stream.read_buf(buffered).await? == 0 {
                    return Err(bad("chunked body cut short"));
                }
            };
            let size_text = String::from_utf8_lossy(&buffered[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if request.body.len() + size > MAX_REQUEST {
                return Err(bad("body too large"));
            }
            while buffered.len() < line_end + 2 + size + 2 {
                if stream.read_buf(buffered).await? == 0 {
                    return Err(bad("chunked body cut short"));
                }
            }
            request
                .body
                .extend_from_slice(&buffered[line_end + 2..line_end + 2 + size]);
            buffered.drain(..line_end + 2 + size + 2);
            if size == 0 {
                // The zero chunk's CRLF was the trailer's end (no trailers are sent).
                return Ok(Some(request));
            }
        }
    }
    let length: usize = request
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if length > MAX_REQUEST {
        return Err(bad("body too large"));
    }
    while buffered.len() < length {
        if stream.read_buf(buffered).await? == 0 {
            return Err(bad("body cut short"));
        }
    }
    request.body = buffered.drain(..length).collect();
    Ok(Some(request))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_json(stream: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        reason(status),
        text.len()
    );
    stream.write_all(answer.as_bytes()).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn invalid(message: &str) -> (u16, Value) {
    (
        400,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// The completion of `prompt`: its characters reversed.
pub fn completion_of(prompt: &str) -> String {
    prompt.chars().rev().collect()
}

/// The chat answer to `messages`: `echo: ` and the last user message's content.
pub fn chat_answer(messages: &[Value]) -> String {
    let last = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .unwrap_or_default();
    format!("echo: {last}")
}

/// The pieces a streamed `text` arrives in: word by word, each after the first with the space
/// before it (as tokenizers cut text).
pub fn pieces_of(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .map(|(n, w)| {
            if n == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

fn usage(prompt: &str, completion: &str) -> Value {
    let words = |t: &str| t.split_whitespace().count();
    json!({"prompt_tokens": words(prompt), "completion_tokens": words(completion),
           "total_tokens": words(prompt) + words(completion)})
}

fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn chat(body: &Value) -> (u16, Value) {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return invalid("'messages' is a required property");
    };
    let content = chat_answer(messages);
    let prompt: String = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    (
        200,
        json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": now(),
            "model": model_of(body),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": usage(&prompt, &content),
        }),
    )
}

/// The prompts of a completions request (a string or an array of strings).
fn prompts(body: &Value) -> Option<Vec<String>> {
    match body.get("prompt")? {
        Value::String(p) => Some(vec![p.clone()]),
        Value::Array(ps) => ps.iter().map(|p| p.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

fn completions(body: &Value) -> (u16, Value) {
    let Some(prompts) = prompts(body) else {
        return invalid("'prompt' must be a string or an array of strings");
    };
    let choices: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(index, p)| json!({"index": index, "text": completion_of(p), "logprobs": null, "finish_reason": "stop"}))
        .collect();
    let all = prompts.join(" ");
    (
        200,
        json!({
            "id": "cmpl-test",
            "object": "text_completion",
            "created": now(),
            "model": model_of(body),
            "choices": choices,
            "usage": usage(&all, &completion_of(&all)),
        }),
    )
}

/// A made-up embedding of `text`: deterministic, from its bytes.
pub fn embedding_of(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBEDDING_DIMS];
    for (n, b) in text.bytes().enumerate() {
        v[n % EMBEDDING_DIMS] += f32::from(b) / 255.0;
    }
    v
}

fn embeddings(body: &Value) -> (u16, Value) {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => match items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
        {
            Some(inputs) => inputs,
            None => return invalid("'input' must be a string or an array of strings"),
        },
        _ => return invalid("'input' is a required property"),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, t)| json!({"object": "embedding", "index": index, "embedding": embedding_of(t)}))
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    (
        200,
        json!({"object": "list", "data": data, "model": model_of(body),
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

fn models(state: &State) -> Value {
    let mut names: Vec<String> = state
        .knobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    names.push("test/llm".to_owned());
    names.sort();
    names.dedup();
    let data: Vec<Value> = names
        .iter()
        .map(
            |id| json!({"id": id, "object": "model", "created": 0, "owned_by": "pgml-proxy-tests"}),
        )
        .collect();
    json!({"object": "list", "data": data})
}

/// Streams the answer as server-sent events in a chunked HTTP body; false when a knob made the
/// server vanish mid-stream (the connection is then dropped).
async fn stream_answer(
    stream: &mut TcpStream,
    body: &Value,
    chat_api: bool,
    knobs: &Knobs,
    state: &State,
) -> std::io::Result<bool> {
    let model = model_of(body);
    let created = now();
    let (text, id, object) = if chat_api {
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            let (status, error) = invalid("'messages' is a required property");
            write_json(stream, status, &error).await?;
            return Ok(true);
        };
        (
            chat_answer(messages),
            "chatcmpl-test",
            "chat.completion.chunk",
        )
    } else {
        let Some(prompts) = prompts(body) else {
            let (status, error) = invalid("'prompt' must be a string or an array of strings");
            write_json(stream, status, &error).await?;
            return Ok(true);
        };
        (
            completion_of(prompts.first().map(String::as_str).unwrap_or_default()),
            "cmpl-test",
            "text_completion",
        )
    };
    let chunk = |choice: Value| json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
    let mut events = Vec::new();
    if chat_api {
        // OpenAI's first chunk carries the role and empty content.
        events.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})));
    }
    for piece in pieces_of(&text) {
        events.push(if chat_api {
            chunk(json!({"index": 0, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}))
        } else {
            chunk(json!({"index": 0, "text": piece, "logprobs": null, "finish_reason": null}))
        });
    }
    events.push(if chat_api {
        chunk(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}))
    } else {
        chunk(json!({"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}))
    });
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await?;
    for (n, event) in events.iter().enumerate() {
        if knobs.vanish_after == Some(n) {
            return Ok(false);
        }
        if n > 0 {
            tokio::time::sleep(knobs.chunk_delay).await;
        }
        write_chunk(stream, &format!("data: {event}\n\n")).await?;
        state
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Written {
                model: model.clone(),
                chunk: n,
                at: Instant::now(),
            });
    }
    write_chunk(stream, "data: [DONE]\n\n").await?;
    stream.write_all(b"0\r\n\r\n").await?;
    Ok(true)
}

async fn write_chunk(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let framed = format!("{:x}\r\n{data}\r\n", data.len());
    stream.write_all(framed.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One HTTP exchange over a new connection (Connection: close); (status, head, body).
    fn exchange(
        server: &OpenAiServer,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String, String) {
        let mut conn = std::net::TcpStream::connect(server.addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_owned(), rest.to_owned())
    }

    /// The data of each SSE event in a chunked body.
    fn events(chunked: &str) -> Vec<String> {
        let mut data = String::new();
        let mut rest = chunked;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size, 16).expect("chunk size");
            if size == 0 {
                break;
            }
            data.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        data.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn chat_answers_in_openais_shape_and_records_the_request() {
        let server = OpenAiServer::start();
        let (status, _, body) = exchange(
            &server,
            "POST",
            "/v1/chat/completions",
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi there"}]}"#,
        );
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
        assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi there");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert!(answer["usage"]["total_tokens"].as_u64().is_some());
        let seen = server.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, "/v1/chat/completions");
        assert_eq!(seen[0].header("Authorization"), Some("Bearer sk-test"));
        assert_eq!(seen[0].model(), Some("m"));
    }

    #[test]
    fn a_stream_is_server_sent_events_ending_in_done() {
        let server = OpenAiServer::start();
        let (status, head, body) = exchange(
            &server,
            "POST",
            "/v1/chat/completions",
            r#"{"model": "m", "stream": true, "messages": [{"role": "user", "content": "a b c"}]}"#,
        );
        assert_eq!(status, 200);
        assert!(head.contains("text/event-stream"), "{head}");
        let sse = events(&body);
        assert_eq!(sse.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = sse[..sse.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("JSON event"))
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "echo: a b c");
        assert_eq!(
            chunks.last().expect("chunks")["choices"][0]["finish_reason"],
            "stop"
        );
        // Each chunk's write is recorded, in order ([DONE] is not a chunk).
        let written = server.chunks_written();
        assert_eq!(
            written.iter().map(|w| w.chunk).collect::<Vec<_>>(),
            (0..chunks.len()).collect::<Vec<_>>()
        );
        assert!(written.iter().all(|w| w.model == "m"));
        assert!(written.windows(2).all(|w| w[0].at <= w[1].at));

        let (_, _, body) = exchange(
            &server,
            "POST",
            "/v1/completions",
            r#"{"model": "m", "stream": true, "prompt": "x y"}"#,
        );
        let text: String = events(&body)
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str::<Value>(e).expect("JSON event"))
            .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "y x");
    }

    #[test]
    fn knobs_fail_or_vanish_per_model() {
        let server = OpenAiServer::start();
        server.set_knobs(
            "broken",
            Knobs {
                fail: Some((503, "overloaded".into())),
                ..Knobs::default()
            },
        );
        server.set_knobs(
            "vanishing",
            Knobs {
                vanish_after: Some(2),
                ..Knobs::default()
            },
        );
        let (status, _, body) = exchange(
            &server,
            "POST",
            "/v1/completions",
            r#"{"model": "broken", "prompt": "p"}"#,
        );
        assert_eq!(status, 503);
        let error: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(error["error"]["message"], "overloaded");
        let (_, _, body) = exchange(
            &server,
            "POST",
            "/v1/chat/completions",
            r#"{"model": "vanishing", "stream": true, "messages": [{"role": "user", "content": "a b c d"}]}"#,
        );
        assert!(!body.contains("[DONE]"), "{body}");
        assert_eq!(events(&body).len(), 2, "{body}");
        let (status, _, body) = exchange(
            &server,
            "POST",
            "/v1/completions",
            r#"{"model": "other", "prompt": ["ab", "cd"]}"#,
        );
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["choices"][1]["text"], "dc");
        let (status, _, body) = exchange(&server, "GET", "/v1/models", "");
        assert_eq!(status, 200);
        assert!(body.contains("\"vanishing\""), "{body}");
        let (status, _, body) = exchange(
            &server,
            "POST",
            "/v1/embeddings",
            r#"{"model": "e", "input": ["a", "b"]}"#,
        );
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            answer["data"][1]["embedding"].as_array().map(Vec::len),
            Some(EMBEDDING_DIMS)
        );
    }
}
