//! The HTTP plumbing every remote call shares (embeddings in `remote.rs`, generation in
//! `generate/`): one attempt with the bearer token, how a failure is classified, which ones
//! are retried and after how long, and bounded reads of a JSON body. No request shapes here.

use std::future::Future;
use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::remote::RemoteConfig;
use crate::remote_endpoint::error_message;

/// `url` without any `user:password@`: for error messages, logs and metric labels, which
/// clients and scrapers read (a route URL may carry credentials).
pub(crate) fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// A connect failure's text without `url`'s credentials (ureq's messages quote the URL as
/// given).
pub(crate) fn connect_reason_without_userinfo(reason: &str, url: &str) -> String {
    reason.replace(url, &without_userinfo(url))
}

/// Why one HTTP attempt failed.
pub(crate) enum Failure {
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
    /// Connect errors, 429 and 5xx: the server may do better in a moment.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) => true,
            Failure::Status { code, .. } => *code == 429 || *code >= 500,
            Failure::Timeout | Failure::Body(_) => false,
        }
    }

    /// The failure in words, `timeout` being the limit that expired for `Timeout`.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Failure::Timeout => format!("timed out after {timeout:?}"),
            Failure::Connect(reason) | Failure::Body(reason) => reason.clone(),
            Failure::Status { code, message, .. } => format!("HTTP {code}: {message}"),
        }
    }
}

/// Sends `body` as JSON with the bearer token; a 2xx response comes back unread.
pub(crate) fn send_json(
    mut request: ureq::Request,
    token: Option<&str>,
    body: &Value,
) -> Result<ureq::Response, Failure> {
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    classify(request.send_json(body))
}

/// A GET with the bearer token; a 2xx response comes back unread.
pub(crate) fn get(request: ureq::Request, token: Option<&str>) -> Result<ureq::Response, Failure> {
    let request = match token {
        Some(token) => request.set("Authorization", &format!("Bearer {token}")),
        None => request,
    };
    classify(request.call())
}

fn classify(sent: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, Failure> {
    match sent {
        Ok(response) => Ok(response),
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

/// The body as JSON, reading at most `max_bytes` of it.
pub(crate) fn read_json(response: ureq::Response, max_bytes: u64) -> Result<Value, Failure> {
    let reader = response.into_reader().take(max_bytes);
    serde_json::from_reader(reader).map_err(|e| match e.io_error_kind() {
        Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => Failure::Timeout,
        _ => Failure::Body(format!("response is not JSON: {e}")),
    })
}

/// Whether an I/O error is an expired socket timeout (`WouldBlock` on some platforms).
pub(crate) fn is_timeout_kind(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// ureq reports a timeout as an I/O transport error whose source is `TimedOut`
/// (or `WouldBlock`, which some platforms give for an expired socket timeout).
fn is_timeout(transport: &ureq::Transport) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_timeout_kind(io.kind()) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Runs `attempt(n)` (n counts from 1) until it succeeds, fails for good, or the retry budget
/// is spent, with exponential backoff (a server's Retry-After honoured up to the cap). The
/// error carries the number of attempts made.
pub(crate) async fn with_retries<T, F, Fut>(
    config: &RemoteConfig,
    url: &str,
    mut attempt: F,
) -> Result<T, (Failure, u32)>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut n: u32 = 0;
    loop {
        n += 1;
        let failure = match attempt(n).await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        if !failure.retryable() || n > config.retries {
            return Err((failure, n));
        }
        let doubled = config.backoff.saturating_mul(1u32 << (n - 1).min(16));
        let delay = match &failure {
            Failure::Status {
                retry_after: Some(after),
                ..
            } => doubled.max(*after),
            _ => doubled,
        }
        .min(config.max_backoff);
        tracing::warn!(url, attempt = n, delay_ms = delay.as_millis() as u64,
            reason = %failure.describe(config.timeout), "remote request failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Runs one blocking HTTP attempt on tokio's blocking pool. ureq enforces the timeouts;
/// `guard` only covers a thread that never comes back.
pub(crate) async fn blocking<T, F>(guard: Duration, call: F) -> Result<T, Failure>
where
    F: FnOnce() -> Result<T, Failure> + Send + 'static,
    T: Send + 'static,
{
    match tokio::time::timeout(guard, tokio::task::spawn_blocking(call)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Failure::Body(format!("request task failed: {join}"))),
        Err(_) => Err(Failure::Timeout),
    }
}
