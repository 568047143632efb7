//! pgml.embed kwargs: parsed and validated into `EmbedOptions`.
//! Only the JSON shape is checked here; whether a prompt name or truncate_dim fits a model
//! is checked by `model.rs` once the model's configuration is known.

use serde_json::Value;

use crate::error::EngineError;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// ONNX Runtime's CUDA execution provider on the given GPU ordinal.
    Cuda(i32),
}

impl Device {
    /// Parses `cpu`, `cuda`, `cuda:N` (as torch spells them).
    pub fn parse(text: &str) -> Result<Device, EngineError> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match lower.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(EngineError::bad(
                    "device",
                    format!("\"{text}\" is not one of cpu, cuda, cuda:N"),
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The kwargs of one pgml.embed call, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedOptions {
    /// `device`: cpu, cuda, cuda:N; None = the engine's default.
    pub device: Option<Device>,
    /// `normalize_embeddings` (alias `normalize`): L2-normalise after truncation.
    pub normalize: Option<bool>,
    /// `prompt`: text prepended to every input.
    pub prompt: Option<String>,
    /// `prompt_name`: a named prompt from config_sentence_transformers.json.
    pub prompt_name: Option<String>,
    /// `instruction` (INSTRUCTOR models): becomes the prompt.
    pub instruction: Option<String>,
    /// `truncate_dim`: Matryoshka truncation of the output.
    pub truncate_dim: Option<usize>,
    /// `revision`: hub revision (branch, tag or commit).
    pub revision: Option<String>,
    /// `file_name`: which ONNX file of the repo to load (e.g. onnx/model_qint8_avx512.onnx).
    pub file_name: Option<String>,
    /// `batch_size`: accepted for compatibility; batching is the engine's business.
    pub batch_size: Option<usize>,
}

const KNOWN: &str = "device, normalize_embeddings, prompt, prompt_name, instruction, \
                     truncate_dim, revision, file_name, batch_size, trust_remote_code, precision";

impl EmbedOptions {
    /// Validates a kwargs JSON value (an object; null means no kwargs).
    pub fn from_json(kwargs: &Value) -> Result<EmbedOptions, EngineError> {
        let map = match kwargs {
            Value::Null => return Ok(EmbedOptions::default()),
            Value::Object(map) => map,
            other => return Err(EngineError::KwargsNotObject(other.to_string())),
        };
        let mut options = EmbedOptions::default();
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "device" => options.device = Some(Device::parse(string(key, value)?)?),
                "normalize_embeddings" | "normalize" => {
                    options.normalize = Some(boolean(key, value)?)
                }
                "prompt" => options.prompt = Some(string(key, value)?.to_string()),
                "prompt_name" => options.prompt_name = Some(string(key, value)?.to_string()),
                "instruction" => options.instruction = Some(string(key, value)?.to_string()),
                "truncate_dim" => options.truncate_dim = Some(positive(key, value)?),
                "revision" => options.revision = Some(string(key, value)?.to_string()),
                "file_name" => options.file_name = Some(string(key, value)?.to_string()),
                "batch_size" => options.batch_size = Some(positive(key, value)?),
                // No Python runs here, so remote code is never executed either way.
                "trust_remote_code" => {
                    boolean(key, value)?;
                }
                "precision" => {
                    if string(key, value)? != "float32" {
                        return Err(EngineError::bad(key, "only \"float32\" is supported"));
                    }
                }
                _ => {
                    return Err(EngineError::UnknownKwarg {
                        key: key.clone(),
                        hint: format!(" (supported: {KNOWN})"),
                    })
                }
            }
        }
        let prompts = [&options.prompt, &options.prompt_name, &options.instruction];
        if prompts.iter().filter(|p| p.is_some()).count() > 1 {
            return Err(EngineError::bad(
                "prompt",
                "give only one of prompt, prompt_name, instruction",
            ));
        }
        Ok(options)
    }
}

fn string<'a>(key: &str, value: &'a Value) -> Result<&'a str, EngineError> {
    value
        .as_str()
        .ok_or_else(|| EngineError::bad(key, format!("expected a string, got {value}")))
}

fn boolean(key: &str, value: &Value) -> Result<bool, EngineError> {
    value
        .as_bool()
        .ok_or_else(|| EngineError::bad(key, format!("expected true or false, got {value}")))
}

fn positive(key: &str, value: &Value) -> Result<usize, EngineError> {
    match value.as_u64() {
        Some(n) if n > 0 => usize::try_from(n).map_err(|_| EngineError::bad(key, "too large")),
        _ => Err(EngineError::bad(
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
    fn parses_every_supported_key() {
        let options = EmbedOptions::from_json(&json!({
            "device": "cuda:1", "normalize_embeddings": false, "prompt": "query: ",
            "truncate_dim": 64, "revision": "main", "batch_size": 8, "trust_remote_code": true
        }))
        .unwrap();
        assert_eq!(options.device, Some(Device::Cuda(1)));
        assert_eq!(options.normalize, Some(false));
        assert_eq!(options.prompt.as_deref(), Some("query: "));
        assert_eq!(options.truncate_dim, Some(64));
        assert_eq!(options.batch_size, Some(8));
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = EmbedOptions::from_json(&json!({"nromalize": true})).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        assert!(err.to_string().contains("\"nromalize\""), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (kwargs, key) in [
            (json!({"device": "tpu"}), "device"),
            (json!({"truncate_dim": 0}), "truncate_dim"),
            (
                json!({"normalize_embeddings": "yes"}),
                "normalize_embeddings",
            ),
            (json!({"precision": "int8"}), "precision"),
            (json!({"prompt": "a", "instruction": "b"}), "prompt"),
        ] {
            let err = EmbedOptions::from_json(&kwargs).unwrap_err();
            assert_eq!(err.sqlstate(), "22023");
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = EmbedOptions::from_json(&json!([1])).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
    }

    #[test]
    fn null_and_empty_kwargs_are_defaults() {
        assert_eq!(
            EmbedOptions::from_json(&Value::Null).unwrap(),
            EmbedOptions::default()
        );
        assert_eq!(
            EmbedOptions::from_json(&json!({})).unwrap(),
            EmbedOptions::default()
        );
    }
}
