//! One OpenAI-compatible server as the `Generator` talks to it: its API base, a ureq agent
//! with its timeouts, the bound on requests in flight, and the retried POSTs (a whole answer,
//! or a stream opened up to its first byte). The retry policy is `remote_http`'s, shared
//! with the embedding backends.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::error::EngineError;
use crate::remote::RemoteConfig;
use crate::remote_http::{self, Failure};

/// Largest non-streamed answer read (a long completion is tens of KB).
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// Which OpenAI endpoint a request goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Completions,
    ChatCompletions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::ChatCompletions => "chat/completions",
        }
    }
}

/// A server's base and connection settings; routes with the same URL share one.
pub(crate) struct Backend {
    /// The OpenAI API base (`http://host:port/v1`).
    base: String,
    agent: ureq::Agent,
    config: RemoteConfig,
    permits: Semaphore,
}

impl Backend {
    /// A backend at `base` with at most `in_flight` requests at a time.
    pub fn new(base: String, config: RemoteConfig, in_flight: usize) -> Backend {
        // Per-read limits, not one deadline: a stream may last far longer than any gap
        // between its chunks. Whole answers get a deadline per request as well.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.timeout)
            .timeout_read(config.timeout)
            .timeout_write(config.timeout)
            .build();
        Backend {
            base,
            agent,
            permits: Semaphore::new(in_flight.max(1)),
            config,
        }
    }

    /// The URL of `endpoint` on this server.
    pub fn url(&self, endpoint: Endpoint) -> String {
        format!("{}/{}", self.base, endpoint.path())
    }

    /// The per-read timeout.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// POSTs `body` and returns the JSON answer, retrying connect errors, 429 and 5xx.
    pub async fn answer(
        self: &Arc<Self>,
        endpoint: Endpoint,
        body: Value,
    ) -> Result<Value, EngineError> {
        // The whole answer within the timeout (+ connecting); the guard only covers a
        // blocking thread that never returns.
        let guard = self.config.timeout.saturating_mul(2) + Duration::from_secs(1);
        self.post(endpoint, body, guard, |this, url, body| {
            let request = this.agent.post(url).timeout(this.config.timeout);
            let response = remote_http::send_json(request, this.config.token.as_deref(), body)?;
            remote_http::read_json(response, MAX_ANSWER_BYTES)
        })
        .await
    }

    /// POSTs `body` (with `stream: true`) and returns the response once its status says the
    /// stream started, retrying what failed before that; its body is for the caller to read.
    pub async fn open_stream(
        self: &Arc<Self>,
        endpoint: Endpoint,
        body: Value,
    ) -> Result<ureq::Response, EngineError> {
        // Connecting, then the headers: two waits of up to the timeout each.
        let guard = self.config.timeout.saturating_mul(2) + Duration::from_secs(1);
        self.post(endpoint, body, guard, |this, url, body| {
            let request = this.agent.post(url).set("Accept", "text/event-stream");
            remote_http::send_json(request, this.config.token.as_deref(), body)
        })
        .await
    }

    /// One retried POST of `body` to `endpoint`: `attempt` sends it and reads what the caller
    /// needs of the response, on a blocking thread bounded by `guard`. A place among the
    /// requests in flight is held meanwhile only: an open stream waits on its reader, who may
    /// be a cursor fetched from rarely, and must not keep other calls out.
    async fn post<T: Send + 'static>(
        self: &Arc<Self>,
        endpoint: Endpoint,
        body: Value,
        guard: Duration,
        attempt: fn(&Backend, &str, &Value) -> Result<T, Failure>,
    ) -> Result<T, EngineError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| EngineError::Cancelled)?;
        let url = self.url(endpoint);
        let shown = remote_http::without_userinfo(&url);
        let body = Arc::new(body);
        let started = std::time::Instant::now();
        let sent = remote_http::with_retries(&self.config, &shown, |_| {
            let this = Arc::clone(self);
            let body = Arc::clone(&body);
            let url = url.clone();
            remote_http::blocking(guard, move || attempt(&this, &url, &body))
        })
        .await;
        tracing::debug!(url = %shown, ok = sent.is_ok(),
            elapsed_ms = started.elapsed().as_millis() as u64, "remote generation");
        sent.map_err(|(failure, attempts)| self.error(&url, failure, attempts))
    }

    /// The EngineError for a request to `url` that failed for good.
    pub fn error(&self, url: &str, failure: Failure, attempts: u32) -> EngineError {
        let shown = remote_http::without_userinfo(url);
        // ureq's messages quote the URL as given, credentials included.
        let failure = match failure {
            Failure::Connect(reason) => {
                Failure::Connect(remote_http::connect_reason_without_userinfo(&reason, url))
            }
            other => other,
        };
        let url = shown;
        match failure {
            Failure::Timeout => EngineError::GenerateTimeout {
                url,
                timeout: self.config.timeout,
            },
            Failure::Connect(reason) => EngineError::GenerateUnreachable {
                url,
                attempts,
                reason,
            },
            Failure::Status { code, message, .. } => EngineError::GenerateStatus {
                url,
                status: code,
                message: if attempts > 1 {
                    format!("{message} (after {attempts} attempts)")
                } else {
                    message
                },
            },
            Failure::Body(reason) => EngineError::GenerateResponse { url, reason },
        }
    }
}
