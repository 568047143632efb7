//! pgml.embed kwargs as a remote backend can honour them: which go into the request, which
//! are applied here (prompt prefix, truncate_dim, normalize_embeddings) and which are refused
//! because a remote server cannot do what they ask (instruction pooling, revision, file_name).

use serde_json::Value;

use crate::error::EngineError;
use crate::remote_endpoint::{RemoteApi, RequestExtras};

/// Validated kwargs of one remote pgml.embed call.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RemoteOptions {
    /// Prepended to every text before sending (`prompt`).
    pub prompt: Option<String>,
    /// Matryoshka truncation, applied to the returned vectors.
    pub truncate_dim: Option<usize>,
    /// `normalize_embeddings: true`: L2-normalise after truncation, as sentence-transformers.
    pub normalize: bool,
    /// What travels in the request body.
    pub extras: RequestExtras,
}

const SUPPORTED: &str = "normalize_embeddings, prompt, truncate_dim, truncate (tei), \
                         prompt_name (tei), device, batch_size, trust_remote_code, precision";

impl RemoteOptions {
    /// Validates kwargs for a backend speaking `api`; unknown or unsupported keys are 22023.
    pub fn from_json(kwargs: &Value, api: RemoteApi) -> Result<RemoteOptions, EngineError> {
        let map = match kwargs {
            Value::Null => return Ok(RemoteOptions::default()),
            Value::Object(map) => map,
            other => return Err(EngineError::KwargsNotObject(other.to_string())),
        };
        let mut options = RemoteOptions::default();
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            match (key.as_str(), api) {
                // Only adds normalisation (sentence-transformers semantics): `false` keeps
                // whatever the backend returns, which for TEI is its own default.
                ("normalize_embeddings" | "normalize", _) => {
                    options.normalize = boolean(key, value)?;
                    if options.normalize {
                        options.extras.normalize = Some(true);
                    }
                }
                ("prompt", _) => options.prompt = Some(string(key, value)?.to_string()),
                ("truncate_dim", _) => options.truncate_dim = Some(positive(key, value)?),
                ("truncate", RemoteApi::Tei) => {
                    options.extras.truncate = Some(boolean(key, value)?)
                }
                ("prompt_name", RemoteApi::Tei) => {
                    options.extras.prompt_name = Some(string(key, value)?.to_string())
                }
                // Placement and batching are the remote server's business; accepted so that
                // statements written for PostgresML keep working when a model is routed away.
                ("device" | "trust_remote_code", _) => {
                    if !(value.is_string() || value.is_boolean()) {
                        return Err(bad(key, format!("unexpected value {value}")));
                    }
                }
                ("batch_size", _) => {
                    positive(key, value)?;
                }
                ("precision", _) => {
                    if string(key, value)? != "float32" {
                        return Err(bad(key, "only \"float32\" is supported"));
                    }
                }
                _ => {
                    return Err(EngineError::UnknownKwarg {
                        key: key.clone(),
                        hint: format!(
                            " by the remote {} backend serving this model (supported: {SUPPORTED})",
                            match api {
                                RemoteApi::Tei => "text-embeddings-inference",
                                RemoteApi::OpenAi => "OpenAI-compatible",
                            }
                        ),
                    })
                }
            }
        }
        if options.prompt.is_some() && options.extras.prompt_name.is_some() {
            return Err(bad("prompt", "give only one of prompt, prompt_name"));
        }
        Ok(options)
    }

    /// The text as sent: the prompt prefix, then the input.
    pub fn input(&self, text: String) -> String {
        match &self.prompt {
            Some(prompt) => format!("{prompt}{text}"),
            None => text,
        }
    }
}

fn bad(key: &str, reason: impl Into<String>) -> EngineError {
    EngineError::BadKwarg {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn string<'a>(key: &str, value: &'a Value) -> Result<&'a str, EngineError> {
    value
        .as_str()
        .ok_or_else(|| bad(key, format!("expected a string, got {value}")))
}

fn boolean(key: &str, value: &Value) -> Result<bool, EngineError> {
    value
        .as_bool()
        .ok_or_else(|| bad(key, format!("expected true or false, got {value}")))
}

fn positive(key: &str, value: &Value) -> Result<usize, EngineError> {
    match value.as_u64() {
        Some(n) if n > 0 => usize::try_from(n).map_err(|_| bad(key, "too large")),
        _ => Err(bad(
            key,
            format!("expected a positive integer, got {value}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remote_kwargs_split_into_request_and_local_parts() {
        let o = RemoteOptions::from_json(
            &json!({"prompt": "query: ", "truncate_dim": 64, "normalize_embeddings": true,
                    "truncate": true, "device": "cuda", "batch_size": 8}),
            RemoteApi::Tei,
        )
        .unwrap();
        assert_eq!(o.input("x".into()), "query: x");
        assert_eq!(o.truncate_dim, Some(64));
        assert!(o.normalize);
        assert_eq!(o.extras.truncate, Some(true));
        assert_eq!(o.extras.normalize, Some(true));
    }

    #[test]
    fn keys_a_remote_backend_cannot_honour_are_named() {
        for (kwargs, api, key) in [
            (
                json!({"instruction": "Represent: "}),
                RemoteApi::Tei,
                "instruction",
            ),
            (json!({"revision": "main"}), RemoteApi::OpenAi, "revision"),
            (json!({"truncate": true}), RemoteApi::OpenAi, "truncate"),
            (
                json!({"prompt_name": "query"}),
                RemoteApi::OpenAi,
                "prompt_name",
            ),
            (json!({"truncate_dim": 0}), RemoteApi::Tei, "truncate_dim"),
            (json!({"precision": "int8"}), RemoteApi::Tei, "precision"),
        ] {
            let err = RemoteOptions::from_json(&kwargs, api).unwrap_err();
            assert_eq!(err.sqlstate(), "22023");
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = RemoteOptions::from_json(&json!("x"), RemoteApi::Tei).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
    }

    #[test]
    fn normalize_false_leaves_the_backend_default() {
        let o = RemoteOptions::from_json(&json!({"normalize_embeddings": false}), RemoteApi::Tei)
            .unwrap();
        assert_eq!(o, RemoteOptions::default());
    }
}
