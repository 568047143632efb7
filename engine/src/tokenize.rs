//! Tokenization as sentence-transformers does it: the model's tokenizer.json with its own
//! truncation and padding replaced by max_seq_length truncation and no padding (batches are
//! padded to their longest member by `model.rs`).

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::EngineError;

/// A model's tokenizer configured for embedding.
pub struct TextTokenizer {
    inner: Tokenizer,
    lower_case: bool,
}

impl TextTokenizer {
    /// Loads tokenizer.json and sets truncation to `max_len` tokens (special tokens included).
    pub fn load(
        model: &str,
        path: &Path,
        max_len: usize,
        lower_case: bool,
    ) -> Result<Self, EngineError> {
        let load_err = |reason: String| EngineError::ModelLoad {
            model: model.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| load_err(e.to_string()))?;
        Ok(TextTokenizer { inner, lower_case })
    }

    /// Encodes texts with special tokens; parallel across cores for large batches.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Encoding>, String> {
        let texts = if self.lower_case {
            texts.into_iter().map(|t| t.to_lowercase()).collect()
        } else {
            texts
        };
        if texts.len() == 1 {
            // A single text gains nothing from the rayon pool and would wake its threads.
            let text = texts.into_iter().next().unwrap_or_default();
            return self
                .inner
                .encode(text, true)
                .map(|e| vec![e])
                .map_err(|e| e.to_string());
        }
        self.inner
            .encode_batch(texts, true)
            .map_err(|e| e.to_string())
    }

    /// Tokens a prompt occupies at the start of an encoded text: its encoding's length
    /// minus the trailing special token, as sentence-transformers computes prompt_length.
    pub fn prompt_length(&self, prompt: &str) -> Result<usize, String> {
        let prompt = if self.lower_case {
            prompt.to_lowercase()
        } else {
            prompt.to_string()
        };
        let encoding = self.inner.encode(prompt, true).map_err(|e| e.to_string())?;
        Ok(encoding.get_ids().len().saturating_sub(1))
    }
}
