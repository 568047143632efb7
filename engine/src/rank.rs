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

mod cross_encoder;
mod options;
#[cfg(test)]
mod tests;

pub use cross_encoder::CrossEncoderModel;
pub use options::RankOptions;

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
