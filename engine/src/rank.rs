//! pgml.rank: sentence-transformers' `CrossEncoder(model).rank(query, documents, **kwargs)`
//! (sentence-transformers 3.3.1, as PostgresML pins it) on an ONNX sequence classifier.
//!
//! What is matched:
//! - each text is `str.strip()`ped, then (query, document) is tokenized as a text pair with
//!   `truncation="longest_first"` to the tokenizer's `model_max_length` (CrossEncoder's
//!   max_length is None), special tokens included;
//! - pairs run in order in batches of `batch_size` (default 32), each padded to its longest
//!   pair with the tokenizer's pad token (this matters for int8 graphs whose dynamic
//!   quantisation ranges span the whole batch);
//! - the score is the single logit through the model's default activation: config.json's
//!   `sbert_ce_default_activation_function` (or sentence-transformers 4's
//!   `sentence_transformers.activation_fn`), else Sigmoid, in float32;
//! - results are sorted by score, descending and stable (ties keep document order), then cut
//!   to `top_k`; `corpus_id` is the 0-based index into `documents`.

use std::sync::Mutex;

use ort::session::Session;
use serde_json::Value;
use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::EngineError;
use crate::kwargs::{self, Device};
use crate::model_config::{self, read_optional};
use crate::paths;
use crate::registry::Loadable;
use crate::resolve::ModelFiles;
use crate::runtime::{self, SessionOptions};
use crate::tokenize::{prefix_end, MIN_PREFIX_BYTES, PREFIX_BYTES_PER_TOKEN};

/// CrossEncoder.predict's default batch size.
pub const DEFAULT_RANK_BATCH_SIZE: usize = 32;
/// Largest `batch_size` pgml.rank accepts: one batch is padded to its longest pair, so this
/// bounds the memory of one forward pass (256 pairs of 512 tokens).
pub const MAX_RANK_BATCH_SIZE: usize = 256;

/// One ranked document, as a row of pgml.rank.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedDoc {
    /// 0-based index of the document in the call's `documents`.
    pub corpus_id: usize,
    /// The activated score (a float32 widened to f64, as PostgresML's `.item()` does).
    pub score: f64,
    /// The document itself when kwargs asked for `return_documents`; None otherwise (NULL).
    pub text: Option<String>,
}

/// The kwargs of one pgml.rank call, validated.
///
/// Accepted keys are CrossEncoder.rank's (3.3.1) parameters; a key it does not take is an
/// error, as Python's TypeError is in PostgresML. Accepted and ignored because they cannot
/// change a row: `show_progress_bar`, `num_workers`, `convert_to_numpy`, `convert_to_tensor`
/// (PostgresML turns every score into a float either way), and `apply_softmax` (it applies
/// only to models with several labels, which rank refuses). `activation_fct` is accepted only
/// as null: PostgresML can pass it only as JSON, never as the callable Python needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RankOptions {
    /// `top_k`: keep the best k rows (0 keeps none, as Python's `results[:0]`); None = all.
    pub top_k: Option<usize>,
    /// `return_documents`: fill `RankedDoc::text`.
    pub return_documents: bool,
    /// `batch_size`: pairs per forward pass (1..=MAX_RANK_BATCH_SIZE).
    pub batch_size: usize,
}

impl Default for RankOptions {
    fn default() -> Self {
        RankOptions {
            top_k: None,
            return_documents: false,
            batch_size: DEFAULT_RANK_BATCH_SIZE,
        }
    }
}

const RANK_KNOWN: &str = "top_k, return_documents, batch_size, show_progress_bar, num_workers, \
                          activation_fct (null only), apply_softmax, convert_to_numpy, \
                          convert_to_tensor";

impl RankOptions {
    /// Validates a kwargs JSON value (an object; null means no kwargs). A null value of any
    /// accepted key means its default.
    pub fn from_json(kwargs: &Value) -> Result<RankOptions, EngineError> {
        let map = match kwargs {
            Value::Null => return Ok(RankOptions::default()),
            Value::Object(map) => map,
            other => return Err(EngineError::KwargsNotObject(kwargs::brief(other))),
        };
        let mut options = RankOptions::default();
        for (key, value) in map {
            let known = matches!(
                key.as_str(),
                "top_k"
                    | "return_documents"
                    | "batch_size"
                    | "show_progress_bar"
                    | "num_workers"
                    | "activation_fct"
                    | "apply_softmax"
                    | "convert_to_numpy"
                    | "convert_to_tensor"
            );
            if !known {
                return Err(EngineError::UnknownKwarg {
                    key: paths::shown(key),
                    hint: format!(" by pgml.rank (supported: {RANK_KNOWN})"),
                });
            }
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "top_k" => options.top_k = Some(non_negative(key, value)?),
                "return_documents" => options.return_documents = kwargs::boolean(key, value)?,
                "batch_size" => {
                    options.batch_size = kwargs::positive(key, value, MAX_RANK_BATCH_SIZE)?
                }
                "num_workers" => {
                    non_negative(key, value)?;
                }
                "activation_fct" => {
                    return Err(EngineError::bad(
                        key,
                        "only null is accepted: a Python callable cannot be passed as JSON \
                         (the model's default activation applies)",
                    ))
                }
                _ => {
                    kwargs::boolean(key, value)?;
                }
            }
        }
        Ok(options)
    }
}

/// A non-negative integer; values past usize mean "all" and saturate.
fn non_negative(key: &str, value: &Value) -> Result<usize, EngineError> {
    value
        .as_u64()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .ok_or_else(|| {
            EngineError::bad(
                key,
                format!(
                    "expected a non-negative integer or null, got {}",
                    kwargs::brief(value)
                ),
            )
        })
}

/// Python's `str.strip()`: Unicode whitespace plus the four information separators
/// (U+001C..U+001F), which Python counts as whitespace and Rust does not.
pub fn py_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Sorts scores as CrossEncoder.rank does (descending, stable) and keeps `top_k`.
pub fn order(scores: &[f32], top_k: Option<usize>) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| (i, f64::from(s)))
        .collect();
    ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    if let Some(k) = top_k {
        ranked.truncate(k);
    }
    ranked
}

/// The activation applied to the logit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    Sigmoid,
    Identity,
    Tanh,
}

impl Activation {
    fn from_name(name: &str) -> Option<Activation> {
        match name.rsplit('.').next()? {
            "Sigmoid" => Some(Activation::Sigmoid),
            "Identity" => Some(Activation::Identity),
            "Tanh" => Some(Activation::Tanh),
            _ => None,
        }
    }

    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Identity => x,
            Activation::Tanh => x.tanh(),
        }
    }
}

/// A loaded cross-encoder on one device, shared by every caller.
pub struct CrossEncoderModel {
    pub id: String,
    /// Pair tokenizer: longest_first truncation to `max_len`, no padding.
    tokenizer: Tokenizer,
    /// The same without truncation, to count a prefix's tokens.
    counter: Tokenizer,
    max_len: usize,
    prefix_bytes: usize,
    pad_id: u32,
    activation: Activation,
    session: Mutex<Session>,
    input_names: Vec<String>,
    output: String,
}

impl Loadable for CrossEncoderModel {
    /// Loads a cross-encoder: config.json must name a `...ForSequenceClassification`
    /// architecture with one label, and the graph must give `[batch, 1]` logits.
    fn load(
        id: &str,
        files: &ModelFiles,
        device: Device,
        options: &SessionOptions,
        env: &ort::environment::Environment,
    ) -> Result<Self, EngineError> {
        let wrong = |reason: String| EngineError::WrongModelKind {
            model: id.to_string(),
            reason,
        };
        if model_config::cross_encoder_architecture(id, files)?.is_none() {
            return Err(wrong(
                "is not a cross-encoder (config.json architectures names no \
                 ...ForSequenceClassification class, or the repository is a \
                 sentence-transformers embedding model): pgml.rank needs a sequence \
                 classifier such as cross-encoder/ms-marco-MiniLM-L-6-v2; embedding models \
                 go to pgml.embed"
                    .to_string(),
            ));
        }
        let config: Value = read_optional(id, files.config.as_deref())?;
        let num_labels = config
            .get("num_labels")
            .and_then(Value::as_u64)
            .or_else(|| {
                config
                    .get("id2label")
                    .and_then(Value::as_object)
                    .map(|m| m.len() as u64)
            })
            .unwrap_or(2);
        if num_labels != 1 {
            return Err(wrong(format!(
                "has {num_labels} labels; pgml.rank (CrossEncoder.rank) needs a model with \
                 one score per pair (num_labels = 1)"
            )));
        }
        let load_err = |path: &std::path::Path, reason: String| EngineError::ModelLoad {
            model: id.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let activation_name = config
            .get("sbert_ce_default_activation_function")
            .and_then(Value::as_str)
            .or_else(|| {
                config
                    .get("sentence_transformers")
                    .and_then(|st| st.get("activation_fn"))
                    .and_then(Value::as_str)
            });
        let activation = match activation_name {
            None => Activation::Sigmoid,
            Some(name) => Activation::from_name(name).ok_or_else(|| {
                load_err(
                    files.config.as_deref().unwrap_or(&files.onnx),
                    format!(
                        "unsupported default activation \"{}\" (supported: Sigmoid, Identity, \
                         Tanh)",
                        paths::shown(name)
                    ),
                )
            })?,
        };
        let tok_config: Value = read_optional(id, files.tokenizer_config.as_deref())?;
        let from_tok = tok_config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|n| *n >= 1.0 && *n < 1e9)
            .map(|n| n as usize);
        let from_cfg = config
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let max_len = [from_tok, from_cfg]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(512);

        let tok_err = |reason: String| load_err(&files.tokenizer, reason);
        let mut counter =
            Tokenizer::from_file(&files.tokenizer).map_err(|e| tok_err(e.to_string()))?;
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|e| tok_err(e.to_string()))?;
        let pad_id = pad_token(&tok_config)
            .and_then(|t| counter.token_to_id(&t))
            .or_else(|| counter.get_padding().map(|p| p.pad_id))
            .or_else(|| {
                ["[PAD]", "<pad>"]
                    .iter()
                    .find_map(|t| counter.token_to_id(t))
            })
            .unwrap_or(0);
        let mut tokenizer = counter.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| tok_err(e.to_string()))?;

        let session = runtime::build_session(env, id, &files.onnx, device, options)?;
        let graph_err = |reason: String| load_err(&files.onnx, reason);
        let (input_names, outputs) = runtime::graph_io(&session, graph_err)?;
        let output = outputs
            .iter()
            .find(|n| *n == "logits")
            .or_else(|| outputs.first())
            .cloned()
            .ok_or_else(|| graph_err("graph has no outputs".to_string()))?;
        let model = CrossEncoderModel {
            id: id.to_string(),
            tokenizer,
            counter,
            max_len,
            prefix_bytes: max_len
                .saturating_mul(PREFIX_BYTES_PER_TOKEN)
                .max(MIN_PREFIX_BYTES),
            pad_id,
            activation,
            session: Mutex::new(session),
            input_names,
            output,
        };
        // Fail now, not on the first caller, if the graph does not give one logit per pair.
        let warm = model
            .encode_pairs("warm up", &["a pair".to_string()])
            .map_err(&graph_err)?;
        model.logits(&warm).map_err(|e| graph_err(e.to_string()))?;
        Ok(model)
    }
}

impl CrossEncoderModel {
    /// Token ids of each (query, document) pair as the model sees them.
    pub fn token_ids(&self, query: &str, documents: &[String]) -> Result<Vec<Vec<u32>>, String> {
        Ok(self
            .encode_pairs(query, documents)?
            .iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// A text to tokenize in place of `text`: a whole-word prefix when the prefix alone
    /// holds at least max_len tokens (then longest_first truncation keeps exactly the tokens
    /// it would keep of the whole text), else the text itself.
    fn shortened<'a>(&self, texts: &[&'a str]) -> Result<Vec<&'a str>, String> {
        let cuts: Vec<(usize, &'a str)> = texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                prefix_end(t, self.prefix_bytes).and_then(|e| Some((i, t.get(..e)?)))
            })
            .collect();
        let mut out = texts.to_vec();
        if cuts.is_empty() {
            return Ok(out);
        }
        let counts = self
            .counter
            .encode_batch(cuts.iter().map(|(_, p)| *p).collect::<Vec<_>>(), false)
            .map_err(|e| e.to_string())?;
        for ((i, prefix), encoding) in cuts.into_iter().zip(counts) {
            if encoding.get_ids().len() >= self.max_len {
                if let Some(slot) = out.get_mut(i) {
                    *slot = prefix;
                }
            }
        }
        Ok(out)
    }

    /// Tokenizes (query, document) pairs: stripped, longest_first truncation, no padding.
    fn encode_pairs(&self, query: &str, documents: &[String]) -> Result<Vec<Encoding>, String> {
        let query = self
            .shortened(&[py_strip(query)])?
            .first()
            .copied()
            .unwrap_or_default();
        let docs: Vec<&str> = documents.iter().map(|d| py_strip(d)).collect();
        let docs = self.shortened(&docs)?;
        let inputs: Vec<EncodeInput<'_>> = docs
            .into_iter()
            .map(|d| EncodeInput::Dual(query.into(), d.into()))
            .collect();
        let mut encodings = if inputs.len() == 1 {
            let input = inputs.into_iter().next().ok_or("no input")?;
            vec![self
                .tokenizer
                .encode(input, true)
                .map_err(|e| e.to_string())?]
        } else {
            self.tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| e.to_string())?
        };
        for encoding in &mut encodings {
            drop(encoding.take_overflowing());
        }
        Ok(encodings)
    }

    /// Raw logits of one padded batch, one per pair.
    fn logits(&self, batch: &[Encoding]) -> Result<Vec<f32>, EngineError> {
        let fail = |reason: String| EngineError::Inference {
            model: self.id.clone(),
            reason,
        };
        let rows = batch.len();
        let padded = runtime::padded_batch(batch.iter(), self.pad_id, &self.input_names)
            .map_err(|e| fail(e.to_string()))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| fail("session lock poisoned".into()))?;
        let outputs = session
            .run(padded.inputs)
            .map_err(|e| fail(e.to_string()))?;
        let (shape, data) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        let one_per_row = match &shape[..] {
            [b, 1] => usize::try_from(*b).ok() == Some(rows),
            [b] => usize::try_from(*b).ok() == Some(rows),
            _ => false,
        };
        if !one_per_row || data.len() != rows {
            return Err(fail(format!(
                "expected {} logits of shape [{rows}, 1], got shape {shape:?}",
                self.output
            )));
        }
        Ok(data.to_vec())
    }

    /// Activated scores of (query, document) pairs, in document order: batches of
    /// `batch_size` pairs in order, as CrossEncoder.predict forms them.
    pub fn scores(
        &self,
        query: &str,
        documents: &[String],
        batch_size: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let encodings =
            self.encode_pairs(query, documents)
                .map_err(|reason| EngineError::Inference {
                    model: self.id.clone(),
                    reason,
                })?;
        let mut scores = Vec::with_capacity(encodings.len());
        for batch in encodings.chunks(batch_size.max(1)) {
            scores.extend(
                self.logits(batch)?
                    .into_iter()
                    .map(|x| self.activation.apply(x)),
            );
        }
        Ok(scores)
    }
}

/// tokenizer_config.json's pad_token (a string or an AddedToken object).
fn pad_token(config: &Value) -> Option<String> {
    match config.get("pad_token")? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_accepted_key() {
        let options = RankOptions::from_json(&json!({
            "top_k": 3, "return_documents": true, "batch_size": 8, "show_progress_bar": false,
            "num_workers": 0, "activation_fct": null, "apply_softmax": true,
            "convert_to_numpy": true, "convert_to_tensor": false
        }))
        .unwrap();
        assert_eq!(
            options,
            RankOptions {
                top_k: Some(3),
                return_documents: true,
                batch_size: 8
            }
        );
        assert_eq!(
            RankOptions::from_json(&json!({"top_k": null})).unwrap(),
            RankOptions::default()
        );
        assert_eq!(
            RankOptions::from_json(&Value::Null).unwrap(),
            RankOptions::default()
        );
        assert_eq!(
            RankOptions::from_json(&json!({"top_k": 0})).unwrap().top_k,
            Some(0)
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_accepted_ones() {
        for key in ["topk", "device", "normalize_embeddings", "prompt"] {
            let err = RankOptions::from_json(&json!({ key: 1 })).unwrap_err();
            assert_eq!(err.sqlstate(), "22023");
            let text = err.to_string();
            assert!(text.contains(&format!("\"{key}\"")), "{text}");
            assert!(
                text.contains("top_k, return_documents, batch_size"),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (kwargs, key) in [
            (json!({"top_k": -1}), "top_k"),
            (json!({"top_k": 1.5}), "top_k"),
            (json!({"top_k": "3"}), "top_k"),
            (json!({"return_documents": "yes"}), "return_documents"),
            (json!({"batch_size": 0}), "batch_size"),
            (json!({"batch_size": 100_000}), "batch_size"),
            (
                json!({"activation_fct": "torch.nn.Sigmoid"}),
                "activation_fct",
            ),
            (json!({"apply_softmax": 1}), "apply_softmax"),
            (json!({"num_workers": -2}), "num_workers"),
        ] {
            let err = RankOptions::from_json(&kwargs).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{kwargs}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = RankOptions::from_json(&json!([1, 2])).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        let huge = RankOptions::from_json(&json!({"top_k": u64::MAX})).unwrap();
        assert_eq!(huge.top_k, Some(usize::MAX));
    }

    #[test]
    fn order_is_descending_stable_and_cut_to_top_k() {
        let scores = [0.5f32, 0.9, 0.5, 0.1, 0.9];
        let ids = |r: Vec<(usize, f64)>| r.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(ids(order(&scores, None)), vec![1, 4, 0, 2, 3]);
        assert_eq!(ids(order(&scores, Some(2))), vec![1, 4]);
        assert_eq!(ids(order(&scores, Some(0))), Vec::<usize>::new());
        assert_eq!(ids(order(&scores, Some(99))).len(), 5);
        assert_eq!(order(&[], Some(3)), vec![]);
    }

    #[test]
    fn strip_is_pythons() {
        assert_eq!(py_strip("  a b \t\n"), "a b");
        assert_eq!(py_strip("\u{1c}\u{1f}x\u{a0}\u{3000}\u{2029}"), "x");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x");
        assert_eq!(py_strip(" \u{85} "), "");
    }

    #[test]
    fn activations() {
        assert_eq!(
            Activation::from_name("torch.nn.modules.activation.Sigmoid"),
            Some(Activation::Sigmoid)
        );
        assert_eq!(
            Activation::from_name("torch.nn.modules.linear.Identity"),
            Some(Activation::Identity)
        );
        assert_eq!(
            Activation::from_name("torch.nn.modules.activation.ReLU"),
            None
        );
        assert!((Activation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        assert_eq!(Activation::Identity.apply(-3.5), -3.5);
    }
}
