//! pgml.embed kwargs: parsed and validated into `EmbedOptions`.
//! Only the JSON shape is checked here; whether a prompt name or truncate_dim fits a model
//! is checked by `model.rs` once the model's configuration is known.

use serde_json::Value;

use crate::error::EngineError;
use crate::paths;
use crate::precision::Precision;

/// Largest `batch_size` accepted (it is only validated: batching is the engine's business).
pub const MAX_BATCH_SIZE: usize = 65_536;
/// Largest `truncate_dim` accepted before the model is known (no model is this wide).
const MAX_TRUNCATE_DIM: usize = 1 << 20;
/// Longest prompt or instruction accepted, in bytes.
const MAX_PROMPT_BYTES: usize = 64 * 1024;

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
    /// `precision`: int8 or fp32; None = the operator's choice for the model (fp32 unless
    /// configured with --int8).
    pub precision: Option<Precision>,
}

const KNOWN: &str = "device, normalize_embeddings, prompt, prompt_name, instruction, \
                     truncate_dim, revision, file_name, batch_size, trust_remote_code, precision";

impl EmbedOptions {
    /// Validates a kwargs JSON value (an object; null means no kwargs).
    pub fn from_json(kwargs: &Value) -> Result<EmbedOptions, EngineError> {
        let map = match kwargs {
            Value::Null => return Ok(EmbedOptions::default()),
            Value::Object(map) => map,
            other => return Err(EngineError::KwargsNotObject(brief(other))),
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
                "prompt" => options.prompt = Some(prompt(key, value)?),
                "prompt_name" => options.prompt_name = Some(prompt(key, value)?),
                "instruction" => options.instruction = Some(prompt(key, value)?),
                "truncate_dim" => {
                    options.truncate_dim = Some(positive(key, value, MAX_TRUNCATE_DIM)?)
                }
                "revision" => options.revision = Some(revision(string(key, value)?)?),
                "file_name" => options.file_name = Some(file_name(string(key, value)?)?),
                "batch_size" => options.batch_size = Some(positive(key, value, MAX_BATCH_SIZE)?),
                // No Python runs here, so remote code is never executed either way.
                "trust_remote_code" => {
                    boolean(key, value)?;
                }
                "precision" => options.precision = Some(Precision::parse(string(key, value)?)?),
                _ => {
                    return Err(EngineError::UnknownKwarg {
                        key: paths::shown(key),
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

/// A revision (branch, tag or commit) as the hub cache layout joins it into paths:
/// `refs/<revision>`, `snapshots/<revision>`; branch names may hold `/` but never `..`.
pub fn revision(text: &str) -> Result<String, EngineError> {
    paths::relative_name(text).map_err(|e| EngineError::bad("revision", e.to_string()))?;
    Ok(text.to_string())
}

/// `file_name`: a relative path inside the model repository (`onnx/model.onnx`).
fn file_name(text: &str) -> Result<String, EngineError> {
    paths::relative_name(text).map_err(|e| {
        EngineError::bad(
            "file_name",
            format!("{e}: it must be a relative path inside the model repository"),
        )
    })?;
    Ok(text.to_string())
}

/// A JSON value for an error message, cut short (kwargs can be large).
pub(crate) fn brief(value: &Value) -> String {
    let text = match value {
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
        Value::String(s) => format!("\"{}\"", paths::shown(s)),
        other => other.to_string(),
    };
    paths::shown(&text)
}

fn string<'a>(key: &str, value: &'a Value) -> Result<&'a str, EngineError> {
    value
        .as_str()
        .ok_or_else(|| EngineError::bad(key, format!("expected a string, got {}", brief(value))))
}

fn prompt(key: &str, value: &Value) -> Result<String, EngineError> {
    let text = string(key, value)?;
    if text.len() > MAX_PROMPT_BYTES {
        return Err(EngineError::bad(
            key,
            format!("longer than {MAX_PROMPT_BYTES} bytes"),
        ));
    }
    Ok(text.to_string())
}

pub(crate) fn boolean(key: &str, value: &Value) -> Result<bool, EngineError> {
    value.as_bool().ok_or_else(|| {
        EngineError::bad(key, format!("expected true or false, got {}", brief(value)))
    })
}

/// A positive integer no larger than `max` (never used to size an allocation before this).
pub(crate) fn positive(key: &str, value: &Value, max: usize) -> Result<usize, EngineError> {
    match value.as_u64() {
        Some(n) if n > 0 => match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(EngineError::bad(
                key,
                format!("{n} is larger than the maximum {max}"),
            )),
        },
        _ => Err(EngineError::bad(
            key,
            format!("expected a positive integer, got {}", brief(value)),
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
        for (text, precision) in [
            ("int8", Precision::Int8),
            ("fp32", Precision::Fp32),
            ("float32", Precision::Fp32),
        ] {
            let options = EmbedOptions::from_json(&json!({ "precision": text })).unwrap();
            assert_eq!(options.precision, Some(precision));
        }
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
            (json!({"precision": "int4"}), "precision"),
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
    fn file_name_must_stay_inside_the_repository() {
        let ok = EmbedOptions::from_json(&json!({"file_name": "onnx/model_qint8_avx512.onnx"}));
        assert_eq!(
            ok.unwrap().file_name.as_deref(),
            Some("onnx/model_qint8_avx512.onnx")
        );
        for name in [
            "../../../../etc/passwd",
            "/etc/passwd",
            "onnx/../../x.onnx",
            "file:///etc/shadow",
            "",
        ] {
            let err = EmbedOptions::from_json(&json!({ "file_name": name })).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{name}");
            assert!(err.to_string().contains("file_name"), "{err}");
        }
    }

    #[test]
    fn revision_cannot_climb_out_of_the_cache() {
        let err = EmbedOptions::from_json(&json!({"revision": "../../../etc"})).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        assert!(EmbedOptions::from_json(&json!({"revision": "refs/pr/1"})).is_ok());
    }

    #[test]
    fn huge_numbers_are_refused_not_allocated() {
        for kwargs in [
            json!({"batch_size": 1_000_000_000_000u64}),
            json!({"batch_size": 1e12}),
            json!({"truncate_dim": u64::MAX}),
            json!({"batch_size": -1}),
        ] {
            let err = EmbedOptions::from_json(&kwargs).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{kwargs}");
        }
        assert!(EmbedOptions::from_json(&json!({ "batch_size": MAX_BATCH_SIZE })).is_ok());
    }

    #[test]
    fn error_messages_do_not_echo_large_values() {
        let big = json!({"device": vec![vec![vec![1; 100]; 10]; 10]});
        let err = EmbedOptions::from_json(&big).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        let long_key = json!({ "k".repeat(100_000): 1 });
        let err = EmbedOptions::from_json(&long_key).unwrap_err();
        assert!(err.to_string().len() < 1000, "{}", err.to_string().len());
        let err = EmbedOptions::from_json(&json!("x".repeat(100_000))).unwrap_err();
        assert!(err.to_string().len() < 200);
        let err = EmbedOptions::from_json(&json!({"prompt": "p".repeat(1 << 20)})).unwrap_err();
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
