//! Where a remote embedding backend lives and which API it speaks: the URL grammar
//! (`tei+http://`, `openai+https://`, plain `http://` = TEI unless its path ends in `/v1`),
//! the OpenAI API base (`/v1` appended unless already there), request bodies and response
//! parsing. No I/O here; `remote.rs` sends what this module builds.

use serde_json::{json, Map, Value};

use crate::error::EngineError;

/// The HTTP API a remote backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteApi {
    /// Hugging Face text-embeddings-inference: `POST {base}/embed`.
    Tei,
    /// Any OpenAI-compatible server: `POST {base}/v1/embeddings` (`{base}/embeddings` when the
    /// base already ends in `/v1`).
    OpenAi,
}

/// A parsed backend address: the API and the plain `http(s)://host:port[/prefix]` base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Which API the backend speaks.
    pub api: RemoteApi,
    /// Base URL without the API prefix and without a trailing slash.
    pub base: String,
}

/// What the request carries besides the texts (already validated kwargs).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestExtras {
    /// TEI `normalize`.
    pub normalize: Option<bool>,
    /// TEI `truncate`.
    pub truncate: Option<bool>,
    /// TEI `prompt_name`.
    pub prompt_name: Option<String>,
}

impl RemoteEndpoint {
    /// Parses `tei+http://h:p`, `openai+https://h/p`, or plain `http(s)://...` (TEI, or
    /// OpenAI when the path ends in `/v1`: that is an OpenAI API base, as vLLM prints it).
    pub fn parse(spec: &str) -> Result<RemoteEndpoint, EngineError> {
        let bad = |reason: &str| EngineError::RemoteConfig {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = spec.trim();
        let (api, url) = match trimmed.split_once('+') {
            Some((kind, rest)) if !kind.contains(':') && !kind.contains('/') => {
                let api = match kind.to_ascii_lowercase().as_str() {
                    "tei" => RemoteApi::Tei,
                    "openai" => RemoteApi::OpenAi,
                    _ => return Err(bad("API prefix must be tei+ or openai+")),
                };
                (api, rest)
            }
            _ if ends_in_v1(trimmed) => (RemoteApi::OpenAi, trimmed),
            _ => (RemoteApi::Tei, trimmed),
        };
        let lower = url.to_ascii_lowercase();
        let host = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
            .ok_or_else(|| bad("URL must start with http:// or https://"))?;
        if host.is_empty() || host.starts_with('/') {
            return Err(bad("URL has no host"));
        }
        if url.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
            return Err(bad(
                "URL must be a base address without query, fragment or spaces",
            ));
        }
        Ok(RemoteEndpoint {
            api,
            base: url.trim_end_matches('/').to_string(),
        })
    }

    /// The URL requests are POSTed to.
    pub fn url(&self) -> String {
        match self.api {
            RemoteApi::Tei => format!("{}/embed", self.base),
            RemoteApi::OpenAi => format!("{}/embeddings", self.openai_base()),
        }
    }

    /// The OpenAI API base (`{base}/v1`, or `{base}` when it already ends in `/v1`), under
    /// which `/embeddings`, `/completions`, `/chat/completions` and `/models` live.
    pub fn openai_base(&self) -> String {
        if ends_in_v1(&self.base) {
            self.base.clone()
        } else {
            format!("{}/v1", self.base)
        }
    }

    /// The JSON body for one chunk of texts.
    pub(crate) fn body(&self, model: &str, texts: &[String], extras: &RequestExtras) -> Value {
        match self.api {
            RemoteApi::Tei => {
                let mut body = Map::new();
                body.insert("inputs".into(), json!(texts));
                if let Some(normalize) = extras.normalize {
                    body.insert("normalize".into(), json!(normalize));
                }
                if let Some(truncate) = extras.truncate {
                    body.insert("truncate".into(), json!(truncate));
                }
                if let Some(name) = &extras.prompt_name {
                    body.insert("prompt_name".into(), json!(name));
                }
                Value::Object(body)
            }
            RemoteApi::OpenAi => {
                json!({"model": model, "input": texts, "encoding_format": "float"})
            }
        }
    }

    /// The vectors of a successful response, in input order; `expected` is the chunk size.
    pub(crate) fn vectors(&self, body: Value, expected: usize) -> Result<Vec<Vec<f32>>, String> {
        let vectors = match self.api {
            RemoteApi::Tei => serde_json::from_value::<Vec<Vec<f32>>>(body)
                .map_err(|e| format!("expected [[float, ...], ...]: {e}"))?,
            RemoteApi::OpenAi => openai_vectors(body, expected)?,
        };
        if vectors.len() != expected {
            return Err(format!(
                "sent {expected} texts, got {} vectors",
                vectors.len()
            ));
        }
        if let Some(first) = vectors.first() {
            if first.is_empty() || vectors.iter().any(|v| v.len() != first.len()) {
                return Err("vectors are empty or of different lengths".into());
            }
        }
        Ok(vectors)
    }
}

/// Whether the URL's path (not its host) ends in `/v1`, a trailing slash aside.
fn ends_in_v1(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.split_once('/') {
        Some((_, path)) => {
            let path = path.trim_end_matches('/').to_ascii_lowercase();
            path == "v1" || path.ends_with("/v1")
        }
        None => false,
    }
}

/// The OpenAI API base a `--remote-model` URL names for pgml.transform, or None for a
/// `tei+` URL (text-embeddings-inference generates nothing). A plain `http://h:p` is taken as
/// an OpenAI-compatible server there, since only those generate.
pub(crate) fn generation_base(spec: &str) -> Result<Option<String>, EngineError> {
    let endpoint = RemoteEndpoint::parse(spec)?;
    let explicit_tei = spec
        .trim()
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("tei+"));
    if explicit_tei {
        return Ok(None);
    }
    Ok(Some(endpoint.openai_base()))
}

#[derive(serde::Deserialize)]
struct OpenAiResponse {
    data: Vec<OpenAiItem>,
}

#[derive(serde::Deserialize)]
struct OpenAiItem {
    embedding: Vec<f32>,
    index: usize,
}

/// OpenAI's `data` may come in any order; `index` says which input each belongs to.
fn openai_vectors(body: Value, expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let response: OpenAiResponse = serde_json::from_value(body)
        .map_err(|e| format!("expected {{\"data\": [{{\"embedding\", \"index\"}}]}}: {e}"))?;
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    for item in response.data {
        match slots.get_mut(item.index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            Some(Some(_)) => return Err(format!("index {} appears twice", item.index)),
            None => return Err(format!("index {} out of range", item.index)),
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("no embedding for index {i}")))
        .collect()
}

/// The human part of an error body: TEI `{"error": "..."}`, OpenAI `{"error": {"message"}}`.
pub(crate) fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| match v.get("error") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(obj) => obj
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string),
        None => None,
    });
    let text = message.unwrap_or_else(|| body.trim().to_string());
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_pick_the_api_and_plain_http_is_tei() {
        let e = RemoteEndpoint::parse("openai+https://api.example.com/").unwrap();
        assert_eq!(e.api, RemoteApi::OpenAi);
        assert_eq!(e.url(), "https://api.example.com/v1/embeddings");
        let e = RemoteEndpoint::parse("tei+http://tei:8080").unwrap();
        assert_eq!(
            (e.api, e.url()),
            (RemoteApi::Tei, "http://tei:8080/embed".into())
        );
        let e = RemoteEndpoint::parse("http://10.0.0.1:8080/prefix").unwrap();
        assert_eq!(e.api, RemoteApi::Tei);
        assert_eq!(e.url(), "http://10.0.0.1:8080/prefix/embed");
    }

    #[test]
    fn a_v1_base_is_openai_and_gets_no_second_v1() {
        let e = RemoteEndpoint::parse("http://127.0.0.1:8000/v1").unwrap();
        assert_eq!(e.api, RemoteApi::OpenAi);
        assert_eq!(e.url(), "http://127.0.0.1:8000/v1/embeddings");
        let e = RemoteEndpoint::parse("openai+http://h:8000/v1/").unwrap();
        assert_eq!(e.url(), "http://h:8000/v1/embeddings");
        assert_eq!(e.openai_base(), "http://h:8000/v1");
        let e = RemoteEndpoint::parse("openai+http://h:8000").unwrap();
        assert_eq!(e.openai_base(), "http://h:8000/v1");
        // A host named v1 is not a /v1 path.
        let e = RemoteEndpoint::parse("http://v1").unwrap();
        assert_eq!(e.api, RemoteApi::Tei);
        assert_eq!(
            generation_base("http://h:8000").unwrap().as_deref(),
            Some("http://h:8000/v1")
        );
        assert_eq!(
            generation_base("https://api.openai.com/v1")
                .unwrap()
                .as_deref(),
            Some("https://api.openai.com/v1")
        );
        assert_eq!(generation_base("TEI+http://tei:8080").unwrap(), None);
    }

    #[test]
    fn bad_specs_are_config_errors() {
        for spec in [
            "grpc+http://x",
            "ftp://x",
            "tei+x:80",
            "http://",
            "http://h/?q=1",
            "",
        ] {
            let err = RemoteEndpoint::parse(spec).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{spec}: {err}");
        }
    }

    #[test]
    fn openai_data_is_ordered_by_index() {
        let e = RemoteEndpoint::parse("openai+http://h").unwrap();
        let body = json!({"data": [
            {"embedding": [2.0, 2.0], "index": 1},
            {"embedding": [1.0, 1.0], "index": 0}
        ]});
        let v = e.vectors(body, 2).unwrap();
        assert_eq!(v, vec![vec![1.0, 1.0], vec![2.0, 2.0]]);
        let dup = json!({"data": [
            {"embedding": [1.0], "index": 0}, {"embedding": [1.0], "index": 0}
        ]});
        assert!(e.vectors(dup, 2).unwrap_err().contains("twice"));
    }

    #[test]
    fn wrong_counts_and_ragged_vectors_are_rejected() {
        let e = RemoteEndpoint::parse("tei+http://h").unwrap();
        assert!(e.vectors(json!([[1.0]]), 2).is_err());
        assert!(e.vectors(json!([[1.0], [1.0, 2.0]]), 2).is_err());
        assert!(e.vectors(json!({"x": 1}), 1).is_err());
    }

    #[test]
    fn tei_body_carries_only_the_options_given() {
        let e = RemoteEndpoint::parse("tei+http://h").unwrap();
        let texts = vec!["a".to_string()];
        assert_eq!(
            e.body("m", &texts, &RequestExtras::default()),
            json!({"inputs": ["a"]})
        );
        let extras = RequestExtras {
            truncate: Some(true),
            ..RequestExtras::default()
        };
        assert_eq!(
            e.body("m", &texts, &extras),
            json!({"inputs": ["a"], "truncate": true})
        );
    }

    #[test]
    fn error_messages_come_from_either_shape() {
        assert_eq!(
            error_message(r#"{"error":"too long","error_type":"Validation"}"#),
            "too long"
        );
        assert_eq!(
            error_message(r#"{"error":{"message":"no model"}}"#),
            "no model"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
    }
}
