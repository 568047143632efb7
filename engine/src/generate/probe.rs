//! Whether a `--remote-model` server answers, for `doctor`: `GET {base}/models` on an
//! OpenAI-compatible server (the models it serves), `GET {base}/health` on
//! text-embeddings-inference. Blocking, with the configured timeout; the token is sent,
//! never shown.

use serde_json::Value;

use crate::error::EngineError;
use crate::remote::RemoteConfig;
use crate::remote_endpoint::{generation_base, RemoteEndpoint};
use crate::remote_http::without_userinfo as display_url;
use crate::remote_http::{self, Failure};

/// Largest /models answer read.
const MAX_MODELS_BYTES: u64 = 4 * 1024 * 1024;

/// Asks the server behind route URL `url` whether it is up; Ok says what it answered (the
/// model ids it lists, or "healthy"). Blocks for up to about twice `config.timeout`.
pub fn probe_route(url: &str, config: &RemoteConfig) -> Result<String, EngineError> {
    let endpoint = RemoteEndpoint::parse(url)?;
    let (target, openai) = match generation_base(url)? {
        Some(base) => (format!("{base}/models"), true),
        None => (format!("{}/health", endpoint.base), false),
    };
    let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
    let failed = |failure: Failure| {
        let url = display_url(&target);
        match failure {
            Failure::Timeout => EngineError::GenerateTimeout {
                url,
                timeout: config.timeout,
            },
            Failure::Connect(reason) => EngineError::GenerateUnreachable {
                reason: reason.replace(&target, &url),
                url,
                attempts: 1,
            },
            Failure::Status { code, message, .. } => EngineError::GenerateStatus {
                url,
                status: code,
                message,
            },
            Failure::Body(reason) => EngineError::GenerateResponse { url, reason },
        }
    };
    let response = remote_http::get(agent.get(&target), config.token.as_deref()).map_err(failed)?;
    if !openai {
        return Ok(format!("GET {} answered", display_url(&target)));
    }
    let body = remote_http::read_json(response, MAX_MODELS_BYTES).map_err(failed)?;
    let ids: Vec<&str> = body
        .get("data")
        .and_then(Value::as_array)
        .map(|models| {
            models
                .iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let shown: Vec<&str> = ids.iter().take(10).copied().collect();
    let more = if ids.len() > shown.len() { ", ..." } else { "" };
    Ok(format!(
        "GET {} lists {} model(s): {}{more}",
        display_url(&target),
        ids.len(),
        shown.join(", ")
    ))
}
