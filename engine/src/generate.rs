//! `Generator`: pgml.transform and pgml.transform_stream served by OpenAI-compatible servers
//! (vLLM, llama.cpp, Ollama, TGI, OpenAI), routed by model name with `--remote-model`'s table.
//! Owns the routing and the fan-out of one call into requests; the body mapping (`body`), the
//! HTTP (`backend`) and the event stream (`sse`, `stream`) live in the submodules. Knows
//! nothing about SQL: the proxy passes the task, inputs and args it parsed.

mod backend;
mod body;
mod probe;
mod sse;
mod stream;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::remote_http::without_userinfo as display_url;
use backend::{Backend, Endpoint};
pub use probe::probe_route;

use crate::error::EngineError;
use crate::remote::RemoteConfig;
use crate::remote_endpoint::generation_base;
use crate::routes::RouteTable;

/// Most inputs in one pgml.transform call (each is one HTTP request).
pub const MAX_GENERATE_INPUTS: usize = 1024;

/// Most requests in flight to one server at a time, all calls together: enough that 32
/// sessions calling at once are not serialised, few enough not to flood a small server.
pub const DEFAULT_GENERATE_IN_FLIGHT: usize = 32;

/// Most pgml.transform_stream streams open at once, all servers together: each holds a thread
/// and a connection for as long as its reader wants, so clients opening cursors in a loop
/// must not be able to take the host's threads.
pub const DEFAULT_MAX_OPEN_STREAMS: usize = 256;

/// Most bytes of answers kept for calls with `cache => true` (keys and JSON texts together);
/// the least recently used go first.
pub const ANSWER_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long a cached answer is served before the server is asked again.
pub const ANSWER_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Which OpenAI endpoint a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateTask {
    /// PostgresML "text-generation" with text inputs: one POST {base}/completions per input
    /// (`prompt`), run concurrently (bounded).
    TextGeneration,
    /// PostgresML chat ("conversational", or "text-generation" with jsonb[] messages): the
    /// inputs are one conversation, one POST {base}/chat/completions.
    Chat,
}

/// One pgml.transform or pgml.transform_stream call.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The model name as the SQL gave it (task's "model", else args' "model"); None when
    /// neither names one (then the route of the pattern "*" is used, if any, or the only
    /// route when there is exactly one, with its name).
    pub model: Option<String>,
    pub task: GenerateTask,
    /// TextGeneration: the prompts (JSON strings). Chat: the messages ({"role","content"}
    /// objects).
    pub inputs: Vec<Value>,
    /// PostgresML args as given in SQL (max_new_tokens, temperature, top_p, stop, seed, ...;
    /// "model" is ignored here); mapped to the OpenAI body by the engine.
    pub args: Map<String, Value>,
    /// PostgresML's `cache => true`: pgml.transform may answer a call it has answered before
    /// (same model, task, inputs and args) from memory; pgml.transform_stream ignores it.
    pub cache: bool,
}

/// Sends generation calls to the server routed for their model.
#[derive(Clone)]
pub struct Generator {
    table: Arc<RouteTable<Arc<Backend>>>,
    /// (pattern, URL) as given, in order.
    routes: Vec<(String, String)>,
    /// One permit per open stream, held by its reading thread; `max_streams` of them.
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Answers of calls made with `cache`, by `answer_key`.
    answers: moka::sync::Cache<String, Arc<Value>>,
}

/// The cache of pgml.transform answers (`ANSWER_CACHE_BYTES`, `ANSWER_CACHE_TTL`).
fn answer_cache() -> moka::sync::Cache<String, Arc<Value>> {
    moka::sync::Cache::builder()
        .max_capacity(ANSWER_CACHE_BYTES)
        .weigher(|key: &String, value: &Arc<Value>| {
            let bytes = key.len() + value.to_string().len() + 64;
            u32::try_from(bytes).unwrap_or(u32::MAX)
        })
        .time_to_live(ANSWER_CACHE_TTL)
        .build()
}

/// What identifies a call's answer: the model as named, the task, the inputs and the args.
fn answer_key(request: &GenerateRequest) -> String {
    serde_json::json!([
        request.model,
        matches!(request.task, GenerateTask::Chat),
        request.inputs,
        request.args
    ])
    .to_string()
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("routes", &self.routes())
            .finish()
    }
}

/// A route resolved for one call: the model name to send (None: the server's default).
struct Resolved {
    model: Option<String>,
    backend: Arc<Backend>,
}

impl Generator {
    /// `routes`: (model or pattern, URL) exactly as parsed from `--remote-model` (see
    /// `parse_remote_route`); a pattern ends in `*` (`meta-llama/*`, or `*` for every model);
    /// an exact name beats a pattern, a longer pattern beats a shorter one. `tei+` URLs are
    /// embedding-only and skipped; `config.timeout` bounds connecting and every wait for the
    /// server's next bytes (the whole answer for transform, each chunk for a stream).
    pub fn new(
        routes: Vec<(String, String)>,
        config: RemoteConfig,
    ) -> Result<Generator, EngineError> {
        Generator::with_in_flight(routes, config, DEFAULT_GENERATE_IN_FLIGHT)
    }

    /// As `new`, with at most `in_flight` requests at a time per server.
    pub fn with_in_flight(
        routes: Vec<(String, String)>,
        config: RemoteConfig,
        in_flight: usize,
    ) -> Result<Generator, EngineError> {
        let mut table = RouteTable::default();
        let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
        let mut kept = Vec::new();
        for (name, url) in routes {
            let Some(base) = generation_base(&url)? else {
                continue;
            };
            let backend = backends
                .entry(base.clone())
                .or_insert_with(|| Arc::new(Backend::new(base, config.clone(), in_flight)));
            table.insert(&name, Arc::clone(backend)).map_err(|reason| {
                EngineError::RemoteConfig {
                    spec: format!("{name}={}", display_url(&url)),
                    reason,
                }
            })?;
            kept.push((name, url));
        }
        Ok(Generator {
            table: Arc::new(table),
            routes: kept,
            streams: Arc::new(Semaphore::new(DEFAULT_MAX_OPEN_STREAMS)),
            max_streams: DEFAULT_MAX_OPEN_STREAMS,
            answers: answer_cache(),
        })
    }

    /// At most `streams` transform_stream streams open at once (a further one fails with
    /// 53300 until one ends).
    pub fn with_max_open_streams(mut self, streams: usize) -> Generator {
        self.streams = Arc::new(Semaphore::new(streams));
        self.max_streams = streams;
        self
    }

    /// A Generator with no routes (every call fails with the no-route error).
    pub fn none() -> Generator {
        Generator {
            table: Arc::new(RouteTable::default()),
            routes: Vec::new(),
            streams: Arc::new(Semaphore::new(DEFAULT_MAX_OPEN_STREAMS)),
            max_streams: DEFAULT_MAX_OPEN_STREAMS,
            answers: answer_cache(),
        }
    }

    /// (pattern, URL) of every route, for the log and `doctor`.
    pub fn routes(&self) -> Vec<(String, String)> {
        self.routes.clone()
    }

    /// pgml.transform: the whole PostgresML result as JSON: TextGeneration -> `["text", ...]`
    /// (one string per input, in order; the flat form of PostgresML's docs); Chat ->
    /// `["assistant text"]`. With `cache`, an answer kept from an earlier call with `cache`
    /// (same model, task, inputs and args) is served without asking the server; errors are
    /// not kept.
    pub async fn transform(&self, request: GenerateRequest) -> Result<Value, EngineError> {
        check_inputs(&request)?;
        let key = request.cache.then(|| answer_key(&request));
        if let Some(hit) = key.as_ref().and_then(|k| self.answers.get(k)) {
            return Ok(Value::clone(&hit));
        }
        let answer = self.ask_server(request).await?;
        if let Some(key) = key {
            self.answers.insert(key, Arc::new(answer.clone()));
        }
        Ok(answer)
    }

    /// `transform`, asking the server.
    async fn ask_server(&self, request: GenerateRequest) -> Result<Value, EngineError> {
        let args = body::map_args(&request.args)?;
        let route = self.resolve(request.model.as_deref())?;
        match request.task {
            GenerateTask::Chat => {
                let body = body::body(
                    route.model.as_deref(),
                    ("messages", Value::Array(request.inputs)),
                    &args,
                    false,
                );
                let text = answer(&route.backend, GenerateTask::Chat, body).await?;
                Ok(Value::Array(vec![Value::String(text)]))
            }
            GenerateTask::TextGeneration => {
                let texts = self.complete_all(route, request.inputs, &args).await?;
                Ok(Value::Array(texts.into_iter().map(Value::String).collect()))
            }
        }
    }

    /// pgml.transform_stream: the text pieces as the server streams them (server-sent events,
    /// `stream: true`), in order; TextGeneration uses only the first input. Dropping the
    /// receiver stops the HTTP request (the reading thread notices on its next send).
    pub async fn transform_stream(
        &self,
        request: GenerateRequest,
    ) -> Result<mpsc::Receiver<Result<String, EngineError>>, EngineError> {
        check_inputs(&request)?;
        let args = body::map_args(&request.args)?;
        let route = self.resolve(request.model.as_deref())?;
        let (endpoint, input) = match request.task {
            GenerateTask::Chat => (
                Endpoint::ChatCompletions,
                ("messages", Value::Array(request.inputs)),
            ),
            GenerateTask::TextGeneration => {
                let first = request.inputs.into_iter().next().ok_or_else(|| {
                    EngineError::bad_args("transform_stream needs an input to continue")
                })?;
                (Endpoint::Completions, ("prompt", first))
            }
        };
        let permit = Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            EngineError::TooManyStreams {
                limit: self.max_streams,
            }
        })?;
        let body = body::body(route.model.as_deref(), input, &args, true);
        let response = route.backend.open_stream(endpoint, body).await?;
        let context = stream::StreamContext {
            task: request.task,
            url: display_url(&route.backend.url(endpoint)),
            timeout: route.backend.timeout(),
        };
        let (tx, rx) = mpsc::channel(stream::CHANNEL_PIECES);
        let reader = response.into_reader();
        // Its own thread, not tokio's blocking pool: a stream lives as long as its reader
        // wants, and a pool of finite size would queue the next streams behind idle ones.
        std::thread::Builder::new()
            .name("pgml-generate-stream".into())
            .spawn(move || {
                stream::pump(reader, context, tx);
                drop(permit);
            })?;
        Ok(rx)
    }

    fn resolve(&self, model: Option<&str>) -> Result<Resolved, EngineError> {
        let model = model.filter(|m| !m.is_empty());
        let found = match model {
            Some(m) => self
                .table
                .lookup(m)
                .map(|(_, backend)| (Some(m.to_string()), backend)),
            None => self
                .table
                .default_route()
                .map(|(name, backend)| (name.map(str::to_string), backend)),
        };
        match found {
            Some((model, backend)) => Ok(Resolved {
                model,
                backend: Arc::clone(backend),
            }),
            None => Err(EngineError::NoGenerateRoute {
                model: model.map(str::to_string),
            }),
        }
    }

    /// One completion per prompt, concurrently (the backend bounds how many at once), in
    /// input order; the first failure fails the call and abandons the rest.
    async fn complete_all(
        &self,
        route: Resolved,
        prompts: Vec<Value>,
        args: &Map<String, Value>,
    ) -> Result<Vec<String>, EngineError> {
        let count = prompts.len();
        let mut tasks = JoinSet::new();
        for (i, prompt) in prompts.into_iter().enumerate() {
            let body = body::body(route.model.as_deref(), ("prompt", prompt), args, false);
            let backend = Arc::clone(&route.backend);
            tasks.spawn(async move {
                (
                    i,
                    answer(&backend, GenerateTask::TextGeneration, body).await,
                )
            });
        }
        let mut texts: Vec<Option<String>> = vec![None; count];
        // Dropping `tasks` on an early return aborts the requests not yet sent.
        while let Some(joined) = tasks.join_next().await {
            let (i, text) = joined.map_err(|e| {
                if e.is_cancelled() {
                    EngineError::Cancelled
                } else {
                    EngineError::GenerateResponse {
                        url: display_url(&route.backend.url(Endpoint::Completions)),
                        reason: format!("request task failed: {e}"),
                    }
                }
            })?;
            if let Some(slot) = texts.get_mut(i) {
                *slot = Some(text?);
            }
        }
        Ok(texts.into_iter().map(Option::unwrap_or_default).collect())
    }
}

/// One whole answer's text.
async fn answer(
    backend: &Arc<Backend>,
    task: GenerateTask,
    body: Value,
) -> Result<String, EngineError> {
    let endpoint = match task {
        GenerateTask::TextGeneration => Endpoint::Completions,
        GenerateTask::Chat => Endpoint::ChatCompletions,
    };
    let response = backend.answer(endpoint, body).await?;
    sse::answer_text(task, &response).map_err(|reason| EngineError::GenerateResponse {
        url: display_url(&backend.url(endpoint)),
        reason,
    })
}

/// Inputs the endpoints can take: at most `MAX_GENERATE_INPUTS`; prompts are strings;
/// messages are objects with a string "role", and there is at least one.
fn check_inputs(request: &GenerateRequest) -> Result<(), EngineError> {
    if request.inputs.len() > MAX_GENERATE_INPUTS {
        return Err(EngineError::TooLarge(format!(
            "pgml.transform takes at most {MAX_GENERATE_INPUTS} inputs per call, got {}",
            request.inputs.len()
        )));
    }
    match request.task {
        GenerateTask::TextGeneration => {
            if let Some((i, bad)) = request
                .inputs
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_string())
            {
                return Err(EngineError::bad_args(format!(
                    "text-generation inputs are text; input {} is {bad}",
                    i + 1
                )));
            }
        }
        GenerateTask::Chat => {
            if request.inputs.is_empty() {
                return Err(EngineError::bad_args(
                    "a chat needs at least one {\"role\", \"content\"} message",
                ));
            }
            let bad = request
                .inputs
                .iter()
                .enumerate()
                .find(|(_, m)| !m.is_object() || !m.get("role").is_some_and(Value::is_string));
            if let Some((i, message)) = bad {
                let shown: String = message.to_string().chars().take(200).collect();
                return Err(EngineError::bad_args(format!(
                    "chat message {} must be an object with a \"role\" and a \"content\", got {shown}",
                    i + 1
                )));
            }
        }
    }
    Ok(())
}
