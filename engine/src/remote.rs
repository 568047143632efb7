//! `RemoteEmbedder`: the `Embedder` for a model served elsewhere (text-embeddings-inference
//! or an OpenAI-compatible endpoint). Owns chunking, the HTTP calls (ureq on tokio's blocking
//! pool), timeouts and bounded retries, and serves repeated texts from the embedding cache;
//! the request/response shapes live in `remote_endpoint`, the counters in `remote_metrics`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cache::{CacheKey, EmbeddingCache};
use crate::engine::Embedder;
use crate::error::EngineError;
use crate::pooling;
use crate::remote_endpoint::{error_message, RemoteEndpoint, RequestExtras};
use crate::remote_metrics::{RemoteMetrics, RemoteStats, RemoteStatsTable};
use crate::remote_options::RemoteOptions;

/// Environment variable holding the bearer token sent to remote backends.
pub const REMOTE_TOKEN_ENV: &str = "PGML_PROXY_REMOTE_TOKEN";

/// Largest response body read (a chunk of 32 texts at 4096 dimensions is about 3 MB).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// How requests to remote backends are made.
#[derive(Clone)]
pub struct RemoteConfig {
    /// Most texts in one HTTP request (TEI's default `--max-client-batch-size` is 32).
    pub max_batch: usize,
    /// Most requests in flight to one backend at a time.
    pub max_concurrency: usize,
    /// Per-request limit, connecting and reading the whole response included.
    pub timeout: Duration,
    /// Retries after a connect error, 5xx or 429 (not after a timeout).
    pub retries: u32,
    /// First retry delay; doubles each retry.
    pub backoff: Duration,
    /// Cap on one retry delay (also caps a server's Retry-After).
    pub max_backoff: Duration,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            max_batch: 32,
            max_concurrency: 4,
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            token: None,
        }
    }
}

impl RemoteConfig {
    /// Defaults, with the token from `PGML_PROXY_REMOTE_TOKEN` when set and not empty.
    pub fn from_env() -> Self {
        RemoteConfig {
            token: std::env::var(REMOTE_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
            ..RemoteConfig::default()
        }
    }
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("max_batch", &self.max_batch)
            .field("max_concurrency", &self.max_concurrency)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An `Embedder` backed by one remote server; clones share the connection pool and caches.
#[derive(Clone)]
pub struct RemoteEmbedder {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: RemoteEndpoint,
    url: String,
    agent: ureq::Agent,
    config: RemoteConfig,
    permits: Semaphore,
    /// Native dimension per model, learnt from one probe request.
    dims: Mutex<HashMap<String, usize>>,
    /// Finished vectors, keyed by this URL, the model and the options that change them.
    cache: EmbeddingCache,
    stats: RemoteStatsTable,
}

/// Why one HTTP attempt failed.
enum Failure {
    Timeout,
    Connect(String),
    Status {
        code: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    Body(String),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) => true,
            Failure::Status { code, .. } => *code == 429 || *code >= 500,
            Failure::Timeout | Failure::Body(_) => false,
        }
    }
}

impl RemoteEmbedder {
    /// A backend at `spec` (`tei+http://h:p`, `openai+https://h`, plain `http://h:p` = TEI),
    /// without a cache.
    pub fn new(spec: &str, config: RemoteConfig) -> Result<Self, EngineError> {
        RemoteEmbedder::with_cache(spec, config, EmbeddingCache::new(0))
    }

    /// A backend at `spec` whose vectors are kept in `cache` (shared with the local engine:
    /// one byte budget, one hit/miss count).
    pub fn with_cache(
        spec: &str,
        config: RemoteConfig,
        cache: EmbeddingCache,
    ) -> Result<Self, EngineError> {
        let endpoint = RemoteEndpoint::parse(spec)?;
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        Ok(RemoteEmbedder {
            inner: Arc::new(Inner {
                url: endpoint.url(),
                endpoint,
                agent,
                permits: Semaphore::new(config.max_concurrency.max(1)),
                config,
                dims: Mutex::new(HashMap::new()),
                cache,
                stats: RemoteStatsTable::default(),
            }),
        })
    }

    /// The endpoint this embedder posts to.
    pub fn endpoint(&self) -> &RemoteEndpoint {
        &self.inner.endpoint
    }

    /// Requests, retries, errors and latency per model so far.
    pub fn metrics(&self) -> Vec<RemoteMetrics> {
        self.inner.stats.snapshot(&self.inner.url)
    }
}

#[async_trait::async_trait]
impl Embedder for RemoteEmbedder {
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_in("", model, texts, kwargs).await
    }

    async fn embed_in(
        &self,
        partition: &str,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let options = RemoteOptions::from_json(kwargs, self.inner.endpoint.api)?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Same key semantics as the local engine's: everything that changes the vector.
        let scope: Arc<str> = format!(
            "{partition}\u{0}remote\u{0}{}\u{0}{model}\u{0}{options:?}",
            self.inner.url
        )
        .into();
        let (mut out, missing) = self.inner.cache.get_many(&scope, texts);
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let inputs: Vec<String> = missing
            .iter()
            .map(|(_, t)| options.input(t.clone()))
            .collect();
        let stats = self.inner.stats.for_model(model);
        let mut tasks = JoinSet::new();
        let mut chunk_count = 0;
        for (i, chunk) in inputs
            .chunks(self.inner.config.max_batch.max(1))
            .enumerate()
        {
            let inner = Arc::clone(&self.inner);
            let model = model.to_string();
            let chunk = chunk.to_vec();
            let extras = options.extras.clone();
            let stats = Arc::clone(&stats);
            tasks.spawn(async move {
                let result = inner.post_chunk(&model, chunk, &extras, &stats).await;
                (i, result)
            });
            chunk_count += 1;
        }
        // Dropping `tasks` on an early return aborts the other chunks' requests.
        let mut chunks: Vec<Option<Vec<Vec<f32>>>> = vec![None; chunk_count];
        while let Some(joined) = tasks.join_next().await {
            let (i, result) = joined.map_err(|e| {
                if e.is_cancelled() {
                    EngineError::Cancelled
                } else {
                    self.inner
                        .response_error(format!("request task failed: {e}"))
                }
            })?;
            chunks[i] = Some(result?);
        }
        let vectors = chunks.into_iter().flatten().flatten();
        for ((i, text), vector) in missing.into_iter().zip(vectors) {
            let vector = finish(vector, &options)?;
            let key = CacheKey {
                scope: Arc::clone(&scope),
                text,
            };
            self.inner.cache.insert(key, vector.as_slice().into());
            out[i] = Some(vector);
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| self.inner.response_error("missing vector".into())))
            .collect()
    }

    async fn dimension(&self, model: &str, kwargs: &Value) -> Result<usize, EngineError> {
        let options = RemoteOptions::from_json(kwargs, self.inner.endpoint.api)?;
        let cached = self.inner.dims_get(model);
        let native = match cached {
            Some(dim) => dim,
            None => {
                let probe = self
                    .embed(model, vec!["dimension probe".to_string()], &Value::Null)
                    .await?;
                let dim = probe.first().map(Vec::len).unwrap_or(0);
                self.inner.dims_put(model, dim);
                dim
            }
        };
        match options.truncate_dim {
            Some(dim) if dim > native => Err(too_wide(dim, native)),
            Some(dim) => Ok(dim),
            None => Ok(native),
        }
    }
}

/// truncate_dim, then normalize_embeddings, as SentenceTransformer.encode applies them.
fn finish(mut vector: Vec<f32>, options: &RemoteOptions) -> Result<Vec<f32>, EngineError> {
    if let Some(dim) = options.truncate_dim {
        if dim > vector.len() {
            return Err(too_wide(dim, vector.len()));
        }
        pooling::truncate(&mut vector, dim);
    }
    if options.normalize {
        pooling::normalize(&mut vector);
    }
    Ok(vector)
}

fn too_wide(dim: usize, native: usize) -> EngineError {
    EngineError::BadKwarg {
        key: "truncate_dim".into(),
        reason: format!("{dim} exceeds the dimension {native} the remote backend returns"),
    }
}

impl Inner {
    fn dims_get(&self, model: &str) -> Option<usize> {
        let dims = self.dims.lock().unwrap_or_else(|p| p.into_inner());
        dims.get(model).copied()
    }

    fn dims_put(&self, model: &str, dim: usize) {
        let mut dims = self.dims.lock().unwrap_or_else(|p| p.into_inner());
        dims.insert(model.to_string(), dim);
    }

    /// One chunk; counted as an error when it fails for good.
    async fn post_chunk(
        self: &Arc<Self>,
        model: &str,
        texts: Vec<String>,
        extras: &RequestExtras,
        stats: &RemoteStats,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let result = self.post_with_retries(model, texts, extras, stats).await;
        if result.is_err() {
            stats.error();
        }
        result
    }

    /// One chunk, with bounded retries and exponential backoff.
    async fn post_with_retries(
        self: &Arc<Self>,
        model: &str,
        texts: Vec<String>,
        extras: &RequestExtras,
        stats: &RemoteStats,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| EngineError::Cancelled)?;
        let body = Arc::new(self.endpoint.body(model, &texts, extras));
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let sent = self.send(Arc::clone(&body)).await;
            stats.request(attempt, started.elapsed());
            let failure = match sent {
                Ok(response) => {
                    tracing::debug!(url = %self.url, model, texts = texts.len(), attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64, "remote embed");
                    return self
                        .endpoint
                        .vectors(response, texts.len())
                        .map_err(|reason| self.response_error(reason));
                }
                Err(failure) => failure,
            };
            if !failure.retryable() || attempt > self.config.retries {
                return Err(self.final_error(failure, attempt));
            }
            let doubled = self
                .config
                .backoff
                .saturating_mul(1u32 << (attempt - 1).min(16));
            let delay = match &failure {
                Failure::Status {
                    retry_after: Some(after),
                    ..
                } => doubled.max(*after),
                _ => doubled,
            }
            .min(self.config.max_backoff);
            tracing::warn!(url = %self.url, model, attempt, delay_ms = delay.as_millis() as u64,
                reason = %self.describe(&failure), "remote embed failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One HTTP attempt on the blocking pool; ureq enforces the timeout, the outer
    /// tokio timeout only guards against a thread that never comes back.
    async fn send(self: &Arc<Self>, body: Arc<Value>) -> Result<Value, Failure> {
        let inner = Arc::clone(self);
        let call = tokio::task::spawn_blocking(move || inner.send_blocking(&body));
        let guard = self.config.timeout + Duration::from_secs(1);
        match tokio::time::timeout(guard, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Failure::Body(format!("request task failed: {join}"))),
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn send_blocking(&self, body: &Value) -> Result<Value, Failure> {
        let mut request = self.agent.post(&self.url);
        if let Some(token) = &self.config.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.send_json(body) {
            Ok(response) => read_json(response),
            Err(ureq::Error::Status(code, response)) => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut text = String::new();
                // Best effort: the status alone is still a useful error.
                let _ = response
                    .into_reader()
                    .take(64 * 1024)
                    .read_to_string(&mut text);
                Err(Failure::Status {
                    code,
                    message: error_message(&text),
                    retry_after,
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                if is_timeout(&transport) {
                    Err(Failure::Timeout)
                } else {
                    Err(Failure::Connect(transport.to_string()))
                }
            }
        }
    }

    fn describe(&self, failure: &Failure) -> String {
        match failure {
            Failure::Timeout => format!("timed out after {:?}", self.config.timeout),
            Failure::Connect(reason) | Failure::Body(reason) => reason.clone(),
            Failure::Status { code, message, .. } => format!("HTTP {code}: {message}"),
        }
    }

    fn response_error(&self, reason: String) -> EngineError {
        EngineError::RemoteResponse {
            url: self.url.clone(),
            reason,
        }
    }

    fn final_error(&self, failure: Failure, attempts: u32) -> EngineError {
        match failure {
            Failure::Timeout => EngineError::RemoteTimeout {
                url: self.url.clone(),
                timeout: self.config.timeout,
            },
            Failure::Connect(reason) => EngineError::RemoteUnreachable {
                url: self.url.clone(),
                attempts,
                reason,
            },
            Failure::Status { .. } if attempts > 1 => {
                let reason = format!("{} (after {attempts} attempts)", self.describe(&failure));
                self.response_error(reason)
            }
            other => self.response_error(self.describe(&other)),
        }
    }
}

fn read_json(response: ureq::Response) -> Result<Value, Failure> {
    let reader = response.into_reader().take(MAX_RESPONSE_BYTES);
    serde_json::from_reader(reader).map_err(|e| match e.io_error_kind() {
        Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => Failure::Timeout,
        _ => Failure::Body(format!("response is not JSON: {e}")),
    })
}

/// ureq reports a timeout as an I/O transport error whose source is `TimedOut`
/// (or `WouldBlock`, which some platforms give for an expired socket timeout).
fn is_timeout(transport: &ureq::Transport) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}
