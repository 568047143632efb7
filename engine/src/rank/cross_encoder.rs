//! The loaded cross-encoder: its pair tokenizer, ONNX session and activation, and the scores
//! of (query, document) pairs in batches as CrossEncoder.predict computes them.

use std::sync::Mutex;

use ort::session::Session;
use serde_json::Value;
use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::py_strip;
use crate::error::EngineError;
use crate::kwargs::Device;
use crate::model_config::{self, read_optional};
use crate::paths;
use crate::registry::Loadable;
use crate::resolve::ModelFiles;
use crate::runtime::{self, SessionOptions};
use crate::tokenize::{prefix_end, MIN_PREFIX_BYTES, PREFIX_BYTES_PER_TOKEN};

/// The activation applied to the logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Activation {
    Sigmoid,
    Identity,
    Tanh,
}

impl Activation {
    pub(super) fn from_name(name: &str) -> Option<Activation> {
        match name.rsplit('.').next()? {
            "Sigmoid" => Some(Activation::Sigmoid),
            "Identity" => Some(Activation::Identity),
            "Tanh" => Some(Activation::Tanh),
            _ => None,
        }
    }

    pub(super) fn apply(self, x: f32) -> f32 {
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
