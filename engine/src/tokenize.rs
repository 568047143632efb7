//! Tokenization as sentence-transformers does it: the model's tokenizer.json with its own
//! truncation and padding replaced by max_seq_length truncation and no padding (batches are
//! padded to their longest member by `model.rs`). Long texts are tokenized by a prefix first,
//! so the tokens past max_seq_length (which the tokenizer keeps as "overflow") stay few.

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::EngineError;

/// A model's tokenizer configured for embedding.
pub struct TextTokenizer {
    inner: Tokenizer,
    lower_case: bool,
    /// Texts longer than this are tokenized by a prefix first (see `prefix_end`).
    prefix_bytes: usize,
}

/// Bytes of text per token allowed for in the prefix: real text averages 3-5 bytes a token,
/// so a prefix this long nearly always holds more tokens than the model reads.
pub(crate) const PREFIX_BYTES_PER_TOKEN: usize = 16;
/// Shortest prefix tried.
pub(crate) const MIN_PREFIX_BYTES: usize = 4096;

/// Where to cut `text` for a prefix of about `limit` bytes: at the start of the whitespace
/// run before `limit`, so every word of the prefix is whole and pre-tokenizes as in the full
/// text. None when the text is short enough or has no such whitespace.
pub(crate) fn prefix_end(text: &str, limit: usize) -> Option<usize> {
    if text.len() <= limit {
        return None;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = text.get(..end)?;
    let last_space = head.rfind(char::is_whitespace)?;
    let cut = head
        .get(..last_space)?
        .trim_end_matches(char::is_whitespace)
        .len();
    (cut > 0).then_some(cut)
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
        Ok(TextTokenizer {
            inner,
            lower_case,
            prefix_bytes: max_len
                .saturating_mul(PREFIX_BYTES_PER_TOKEN)
                .max(MIN_PREFIX_BYTES),
        })
    }

    /// Encodes texts with special tokens, truncated to max_len, exactly as tokenizing the whole
    /// text would. A long text is tokenized by a whole-word prefix first; only if that prefix
    /// does not fill max_len (much whitespace, or very long words) is the whole text tokenized.
    /// Overflow tokens are dropped before returning.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Encoding>, String> {
        let mut originals: Vec<(usize, String)> = Vec::new();
        let heads: Vec<String> = texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| match prefix_end(&text, self.prefix_bytes) {
                Some(end) => {
                    let head = text.get(..end).unwrap_or_default().to_string();
                    originals.push((i, text));
                    head
                }
                None => text,
            })
            .collect();
        let mut encodings = self.encode_all(heads)?;
        // A prefix that overflowed holds every token the model reads: the words after the cut
        // only ever add tokens past max_len.
        let (redo, texts): (Vec<usize>, Vec<String>) = originals
            .into_iter()
            .filter(|(i, _)| {
                encodings
                    .get(*i)
                    .is_some_and(|e| e.get_overflowing().is_empty())
            })
            .unzip();
        if !texts.is_empty() {
            for (i, encoding) in redo.into_iter().zip(self.encode_all(texts)?) {
                if let Some(slot) = encodings.get_mut(i) {
                    *slot = encoding;
                }
            }
        }
        for encoding in &mut encodings {
            drop(encoding.take_overflowing());
        }
        Ok(encodings)
    }

    fn encode_all(&self, texts: Vec<String>) -> Result<Vec<Encoding>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// A word-level tokenizer over a, b, c (anything else [UNK]) with BERT-like specials.
    fn tokenizer(max_len: usize) -> TextTokenizer {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null,
          "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}}},
          "decoder": null,
          "model": {"type": "WordLevel", "unk_token": "[UNK]",
                    "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "a": 3, "b": 4, "c": 5}}
        }"#;
        let mut inner = Tokenizer::from_str(json).unwrap();
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .unwrap();
        TextTokenizer {
            inner,
            lower_case: false,
            prefix_bytes: 64,
        }
    }

    fn full_ids(t: &TextTokenizer, text: &str) -> Vec<u32> {
        t.inner.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn prefix_cut_is_at_a_word_boundary_on_a_char_boundary() {
        assert_eq!(prefix_end("short", 64), None);
        assert_eq!(prefix_end("aa bb  cc", 7), Some(5));
        assert_eq!(prefix_end("ééé ééé", 8), Some(6));
        assert_eq!(prefix_end("abcdefgh", 4), None);
    }

    #[test]
    fn long_texts_give_the_same_tokens_as_whole_text_tokenization_without_overflow() {
        let t = tokenizer(6);
        let long_words = format!("{} a b c", "x".repeat(500));
        let spaces = format!("{}a b c a b c", " ".repeat(500));
        let texts = [
            "a b c a b c a b c ".repeat(1000),
            "a b".to_string(),
            long_words,
            spaces,
            format!("c{}", " b a".repeat(40)),
            "é ".repeat(300),
        ];
        let got = t.encode_batch(texts.to_vec()).unwrap();
        for (text, encoding) in texts.iter().zip(&got) {
            assert_eq!(
                encoding.get_ids(),
                full_ids(&t, text).as_slice(),
                "{text:.40}"
            );
            assert!(encoding.get_overflowing().is_empty());
        }
        let single = t.encode_batch(vec![texts[0].clone()]).unwrap();
        assert_eq!(single[0].get_ids(), &[1, 3, 4, 5, 3, 2]);
    }
}
