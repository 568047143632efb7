//! The sentence-transformers configuration of a model: max_seq_length, lower-casing, pooling,
//! normalisation and named prompts, read from the files `resolve.rs` found, with
//! sentence-transformers' defaults where a file is absent.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::EngineError;
use crate::pooling::PoolingConfig;
use crate::resolve::ModelFiles;

/// Used when neither sentence_bert_config.json nor the tokenizer/model config bound the length.
const FALLBACK_MAX_SEQ_LENGTH: usize = 512;

/// Everything about a model except its weights and tokenizer.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Texts are truncated to this many tokens, special tokens included.
    pub max_seq_length: usize,
    /// sentence_bert_config.json's do_lower_case: lower-case texts before tokenizing.
    pub do_lower_case: bool,
    pub pooling: PoolingConfig,
    /// modules.json lists a Normalize module.
    pub normalize: bool,
    /// Named prompts of config_sentence_transformers.json.
    pub prompts: HashMap<String, String>,
    /// Prompt applied when a call names none.
    pub default_prompt_name: Option<String>,
    /// INSTRUCTOR model: `instruction` kwargs apply and are excluded from pooling.
    pub instructor: bool,
}

#[derive(Deserialize, Default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize, Default)]
struct SentenceTransformersConfig {
    #[serde(default)]
    prompts: HashMap<String, String>,
    default_prompt_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

#[derive(Deserialize, Default)]
struct TransformersConfig {
    max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type", default)]
    kind: String,
}

impl ModelConfig {
    /// Reads the configuration files of `files` (model id for error messages).
    pub fn load(model: &str, files: &ModelFiles) -> Result<ModelConfig, EngineError> {
        let sbert: SentenceBertConfig =
            read_optional(model, files.sentence_bert_config.as_deref())?;
        let st: SentenceTransformersConfig =
            read_optional(model, files.sentence_transformers_config.as_deref())?;
        let pooling: Option<PoolingConfig> = match files.pooling_config.as_deref() {
            Some(path) => Some(read(model, path)?),
            None => None,
        };
        let modules: Vec<Module> =
            read_optional::<Option<Vec<Module>>>(model, files.modules.as_deref())?
                .unwrap_or_default();
        let normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        let max_seq_length = match sbert.max_seq_length {
            Some(n) => n,
            None => {
                let tok: TokenizerConfig = read_optional(model, files.tokenizer_config.as_deref())?;
                let cfg: TransformersConfig = read_optional(model, files.config.as_deref())?;
                let from_tok = tok
                    .model_max_length
                    .filter(|n| *n >= 1.0 && *n < 1e9)
                    .map(|n| n as usize);
                [from_tok, cfg.max_position_embeddings]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(FALLBACK_MAX_SEQ_LENGTH)
            }
        };
        Ok(ModelConfig {
            max_seq_length,
            do_lower_case: sbert.do_lower_case,
            pooling: pooling.unwrap_or_default(),
            normalize,
            prompts: st.prompts,
            default_prompt_name: st.default_prompt_name.filter(|n| !n.is_empty()),
            instructor: model.to_ascii_lowercase().contains("instructor"),
        })
    }
}

#[derive(Deserialize, Default)]
struct Architectures {
    #[serde(default)]
    architectures: Option<Vec<String>>,
}

/// config.json's `architectures` when one names a `...ForSequenceClassification` class and the
/// repository is not a sentence-transformers model (no modules.json): a cross-encoder, as
/// sentence-transformers' CrossEncoder tells a trained classifier head. None otherwise.
pub fn cross_encoder_architecture(
    model: &str,
    files: &ModelFiles,
) -> Result<Option<String>, EngineError> {
    if files.modules.is_some() {
        return Ok(None);
    }
    let cfg: Architectures = read_optional(model, files.config.as_deref())?;
    Ok(cfg
        .architectures
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.ends_with("ForSequenceClassification")))
}

pub(crate) fn read<T: DeserializeOwned>(model: &str, path: &Path) -> Result<T, EngineError> {
    let load_err = |reason: String| EngineError::ModelLoad {
        model: model.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| load_err(e.to_string()))
}

pub(crate) fn read_optional<T: DeserializeOwned + Default>(
    model: &str,
    path: Option<&Path>,
) -> Result<T, EngineError> {
    match path {
        Some(path) => read(model, path),
        None => Ok(T::default()),
    }
}
