#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run
#![allow(dead_code)] // each test binary uses a different subset
//! A real HTTP/1.1 embedding server for tests, on 127.0.0.1:0: it speaks
//! text-embeddings-inference's `/embed` and OpenAI's `/v1/embeddings` and computes real vectors
//! with the local engine (no mock objects), logs every request, and can be told to fail
//! (503s), stall, or answer short. Shared by the engine's remote tests and the proxy's
//! end-to-end `--remote-model` test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use pgml_engine::{Embedder, Engine, EngineError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The model `/embed` serves (TEI serves one model).
pub const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub inputs: Vec<String>,
    pub model: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    /// The JSON body answered.
    pub response: Value,
}

/// What the server computes with, how it misbehaves, and what it saw.
pub struct State {
    engine: Engine,
    /// Answer this many requests with 503 before serving.
    pub fail_next: AtomicUsize,
    /// Read requests and never answer.
    pub stall: AtomicBool,
    /// Answer with one vector fewer than asked for.
    pub short: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

impl State {
    /// Every request answered so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl Server {
    /// Starts serving on a free port of 127.0.0.1, computing with `engine`.
    pub async fn start(engine: Engine) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            engine,
            fail_next: AtomicUsize::new(0),
            stall: AtomicBool::new(false),
            short: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, state).await {
                        eprintln!("test server: {e:#}");
                    }
                });
            }
        });
        Server { addr, state }
    }

    /// The backend URL for `api` (`tei` or `openai`), as `--remote-model` takes it.
    pub fn url(&self, api: &str) -> String {
        format!("{api}+http://{}", self.addr)
    }

    /// Every request answered so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen()
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut length = 0;
    let mut authorization = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse()?,
                "authorization" => authorization = Some(value.trim().to_string()),
                "transfer-encoding" => bail!("chunked bodies are not expected"),
                _ => {}
            }
        }
    }
    let (method, path) = (method.to_string(), path.to_string());
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        if stream.read_buf(&mut body).await? == 0 {
            bail!("body cut short");
        }
    }
    let request: Value = serde_json::from_slice(&body[..length]).context("body is not JSON")?;
    if state.stall.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return Ok(());
    }
    let (status, response) = answer(&state, &method, &path, &request).await;
    let inputs = request
        .get("inputs")
        .or_else(|| request.get("input"))
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .unwrap_or_default();
    state.seen.lock().expect("log").push(Seen {
        path: path.clone(),
        inputs,
        model: request
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
        authorization,
        status,
        response: response.clone(),
    });
    let text = response.to_string();
    let reply = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        if status == 200 { "OK" } else { "Error" },
        text.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn answer(state: &State, method: &str, path: &str, request: &Value) -> (u16, Value) {
    if method != "POST" {
        return (405, json!({"error": "POST only"}));
    }
    let fail = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        return (
            503,
            json!({"error": "model is overloaded", "error_type": "Overloaded"}),
        );
    }
    match path {
        // text-embeddings-inference serves one model; `normalize` defaults to true there.
        "/embed" => {
            let Some(inputs) = strings(request.get("inputs")) else {
                return (422, json!({"error": "inputs must be a list of strings"}));
            };
            let normalize = request
                .get("normalize")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let kwargs = json!({"normalize_embeddings": normalize});
            match state.engine.embed(MODEL, inputs, &kwargs).await {
                Ok(mut vectors) => {
                    if state.short.load(Ordering::SeqCst) {
                        vectors.pop();
                    }
                    (200, json!(vectors))
                }
                Err(e) => (
                    424,
                    json!({"error": e.to_string(), "error_type": "Backend"}),
                ),
            }
        }
        // OpenAI-compatible: the model is named per request; data comes back reversed so the
        // client has to order it by `index`.
        "/v1/embeddings" => {
            let (Some(model), Some(inputs)) = (
                request.get("model").and_then(Value::as_str),
                strings(request.get("input")),
            ) else {
                return (
                    400,
                    json!({"error": {"message": "model and input are required"}}),
                );
            };
            match state.engine.embed(model, inputs, &Value::Null).await {
                Ok(vectors) => {
                    let mut data: Vec<Value> = vectors
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                        .collect();
                    data.reverse();
                    (200, json!({"object": "list", "data": data, "model": model}))
                }
                Err(EngineError::ModelNotFound { .. } | EngineError::ModelNotCached { .. }) => (
                    404,
                    json!({"error": {"message": format!("The model `{model}` does not exist"),
                                     "type": "invalid_request_error"}}),
                ),
                Err(e) => (500, json!({"error": {"message": e.to_string()}})),
            }
        }
        _ => (404, json!({"error": "not found"})),
    }
}

fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    serde_json::from_value(value?.clone()).ok()
}
