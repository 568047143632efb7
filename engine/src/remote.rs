//! `RemoteEmbedder`: the `Embedder` for a model served elsewhere (text-embeddings-inference
//! or an OpenAI-compatible endpoint). Owns chunking, the HTTP calls (ureq on tokio's blocking
//! pool), timeouts and bounded retries, and serves repeated texts from the embedding cache;
//! the request/response shapes live in `remote_endpoint`, the counters in `remote_metrics`,
//! the HTTP attempt and retry policy (shared with generation) in `remote_http`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cache::{CacheKey, EmbeddingCache};
use crate::engine::Embedder;
use crate::error::EngineError;
use crate::pooling;
use crate::remote_endpoint::{RemoteEndpoint, RequestExtras};
use crate::remote_http::{self, Failure};
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
        let count = texts.len();
        let shown = remote_http::without_userinfo(&self.url);
        let sent = remote_http::with_retries(&self.config, &shown, |attempt| {
            let body = Arc::clone(&body);
            async move {
                let started = Instant::now();
                let sent = self.send(body).await;
                stats.request(attempt, started.elapsed());
                if sent.is_ok() {
                    tracing::debug!(url = %remote_http::without_userinfo(&self.url), model, texts = count, attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64, "remote embed");
                }
                sent
            }
        })
        .await;
        match sent {
            Ok(response) => self
                .endpoint
                .vectors(response, count)
                .map_err(|reason| self.response_error(reason)),
            Err((failure, attempts)) => Err(self.final_error(failure, attempts)),
        }
    }

    /// One HTTP attempt on the blocking pool.
    async fn send(self: &Arc<Self>, body: Arc<Value>) -> Result<Value, Failure> {
        let inner = Arc::clone(self);
        let guard = self.config.timeout + Duration::from_secs(1);
        remote_http::blocking(guard, move || {
            let request = inner.agent.post(&inner.url);
            let response = remote_http::send_json(request, inner.config.token.as_deref(), &body)?;
            remote_http::read_json(response, MAX_RESPONSE_BYTES)
        })
        .await
    }

    fn describe(&self, failure: &Failure) -> String {
        failure.describe(self.config.timeout)
    }

    fn response_error(&self, reason: String) -> EngineError {
        EngineError::RemoteResponse {
            url: remote_http::without_userinfo(&self.url),
            reason,
        }
    }

    fn final_error(&self, failure: Failure, attempts: u32) -> EngineError {
        match failure {
            // Errors reach clients: a route URL's credentials stay out of them.
            Failure::Timeout => EngineError::RemoteTimeout {
                url: remote_http::without_userinfo(&self.url),
                timeout: self.config.timeout,
            },
            Failure::Connect(reason) => EngineError::RemoteUnreachable {
                url: remote_http::without_userinfo(&self.url),
                attempts,
                reason: remote_http::connect_reason_without_userinfo(&reason, &self.url),
            },
            Failure::Status { .. } if attempts > 1 => {
                let reason = format!("{} (after {attempts} attempts)", self.describe(&failure));
                self.response_error(reason)
            }
            other => self.response_error(self.describe(&other)),
        }
    }
}
