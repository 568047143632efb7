//! Pooling, prompt exclusion, Matryoshka truncation and L2 normalisation as plain functions,
//! with the exact semantics of sentence-transformers' `Pooling` and `Normalize` modules.
//! Reads no files; `model_config.rs` decides which modes a model uses.

use serde::Deserialize;

/// One pooling strategy of sentence-transformers' `Pooling` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's hidden state.
    Cls,
    /// Element-wise max over attended tokens.
    Max,
    /// Mean over attended tokens.
    Mean,
    /// Sum over attended tokens divided by sqrt(token count).
    MeanSqrtLen,
    /// Mean weighted by position (1-based).
    WeightedMean,
    /// The last attended token's hidden state.
    LastToken,
}

/// `1_Pooling/config.json` as sentence-transformers writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolingConfig {
    #[serde(default)]
    pub word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pub pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_lasttoken: bool,
    /// False for INSTRUCTOR-style models: prompt tokens do not enter the pooled vector.
    #[serde(default = "yes")]
    pub include_prompt: bool,
}

fn yes() -> bool {
    true
}

impl Default for PoolingConfig {
    /// Mean pooling: what sentence-transformers uses for a plain transformers checkpoint.
    fn default() -> Self {
        PoolingConfig {
            word_embedding_dimension: None,
            pooling_mode_cls_token: false,
            pooling_mode_mean_tokens: true,
            pooling_mode_max_tokens: false,
            pooling_mode_mean_sqrt_len_tokens: false,
            pooling_mode_weightedmean_tokens: false,
            pooling_mode_lasttoken: false,
            include_prompt: true,
        }
    }
}

impl PoolingConfig {
    /// The active modes, in the order sentence-transformers concatenates them.
    pub fn modes(&self) -> Vec<PoolingMode> {
        let flags = [
            (self.pooling_mode_cls_token, PoolingMode::Cls),
            (self.pooling_mode_max_tokens, PoolingMode::Max),
            (self.pooling_mode_mean_tokens, PoolingMode::Mean),
            (
                self.pooling_mode_mean_sqrt_len_tokens,
                PoolingMode::MeanSqrtLen,
            ),
            (
                self.pooling_mode_weightedmean_tokens,
                PoolingMode::WeightedMean,
            ),
            (self.pooling_mode_lasttoken, PoolingMode::LastToken),
        ];
        flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, mode)| *mode)
            .collect()
    }
}

/// Zeroes the attention of the first `prompt_len` tokens, as sentence-transformers does when
/// the pooling config has `include_prompt: false` (the prompt length counts the leading
/// special token and not the trailing one).
pub fn exclude_prompt(mask: &mut [u8], prompt_len: usize) {
    let n = prompt_len.min(mask.len());
    mask[..n].iter_mut().for_each(|m| *m = 0);
}

/// Pools one sequence's hidden states (`seq_len` rows of `dim` floats) under `mask`;
/// several modes are concatenated.
pub fn pool(hidden: &[f32], dim: usize, mask: &[u8], modes: &[PoolingMode]) -> Vec<f32> {
    let mut out = Vec::with_capacity(dim * modes.len());
    let rows = || hidden.chunks_exact(dim).zip(mask.iter().copied());
    let count = mask.iter().filter(|&&m| m != 0).count() as f32;
    for mode in modes {
        match mode {
            PoolingMode::Cls => out.extend_from_slice(&hidden[..dim]),
            PoolingMode::Max => {
                // Masked positions take -1e9, so an all-masked sequence pools to -1e9 as in torch.
                let mut acc = vec![f32::MIN; dim];
                for (row, m) in rows() {
                    for (a, &h) in acc.iter_mut().zip(row) {
                        *a = a.max(if m != 0 { h } else { -1e9 });
                    }
                }
                out.extend(acc);
            }
            PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                let mut acc = vec![0f32; dim];
                for (row, _) in rows().filter(|(_, m)| *m != 0) {
                    acc.iter_mut().zip(row).for_each(|(a, &h)| *a += h);
                }
                let denom = if *mode == PoolingMode::Mean {
                    count.max(1e-9)
                } else {
                    count.max(1e-9).sqrt()
                };
                out.extend(acc.into_iter().map(|a| a / denom));
            }
            PoolingMode::WeightedMean => {
                let mut acc = vec![0f32; dim];
                let mut total = 0f32;
                for (i, (row, m)) in rows().enumerate() {
                    let w = if m != 0 { (i + 1) as f32 } else { 0.0 };
                    total += w;
                    acc.iter_mut().zip(row).for_each(|(a, &h)| *a += w * h);
                }
                out.extend(acc.into_iter().map(|a| a / total.max(1e-9)));
            }
            PoolingMode::LastToken => {
                let last = mask.iter().rposition(|&m| m != 0).unwrap_or(0);
                out.extend_from_slice(&hidden[last * dim..(last + 1) * dim]);
            }
        }
    }
    out
}

/// L2-normalises in place (torch's `F.normalize`: a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Matryoshka truncation: keeps the first `dim` components.
pub fn truncate(v: &mut Vec<f32>, dim: usize) {
    v.truncate(dim);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Three tokens of dimension 2; the third is padding.
    const HIDDEN: [f32; 6] = [1.0, 2.0, 3.0, -4.0, 100.0, 100.0];
    const MASK: [u8; 3] = [1, 1, 0];

    #[test]
    fn mean_ignores_padding() {
        assert_eq!(
            pool(&HIDDEN, 2, &MASK, &[PoolingMode::Mean]),
            vec![2.0, -1.0]
        );
    }

    #[test]
    fn cls_max_lasttoken_and_weighted() {
        assert_eq!(pool(&HIDDEN, 2, &MASK, &[PoolingMode::Cls]), vec![1.0, 2.0]);
        assert_eq!(pool(&HIDDEN, 2, &MASK, &[PoolingMode::Max]), vec![3.0, 2.0]);
        assert_eq!(
            pool(&HIDDEN, 2, &MASK, &[PoolingMode::LastToken]),
            vec![3.0, -4.0]
        );
        // weights 1 and 2: (1*1 + 2*3)/3, (1*2 + 2*-4)/3
        let w = pool(&HIDDEN, 2, &MASK, &[PoolingMode::WeightedMean]);
        assert!((w[0] - 7.0 / 3.0).abs() < 1e-6 && (w[1] + 2.0).abs() < 1e-6);
        let s = pool(&HIDDEN, 2, &MASK, &[PoolingMode::MeanSqrtLen]);
        assert!((s[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn several_modes_concatenate_in_sentence_transformers_order() {
        let config = PoolingConfig {
            pooling_mode_cls_token: true,
            pooling_mode_max_tokens: true,
            ..PoolingConfig::default()
        };
        let modes = config.modes();
        assert_eq!(
            modes,
            vec![PoolingMode::Cls, PoolingMode::Max, PoolingMode::Mean]
        );
        assert_eq!(
            pool(&HIDDEN, 2, &MASK, &modes),
            vec![1.0, 2.0, 3.0, 2.0, 2.0, -1.0]
        );
    }

    #[test]
    fn instruction_tokens_are_excluded_from_mean_pooling() {
        // [CLS] instr1 instr2 | text1 text2 [SEP] [PAD]: prompt_len 3 covers CLS + 2 tokens.
        let hidden: Vec<f32> = [9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 50.0].to_vec();
        let mut mask = vec![1, 1, 1, 1, 1, 1, 0];
        exclude_prompt(&mut mask, 3);
        assert_eq!(mask, vec![0, 0, 0, 1, 1, 1, 0]);
        assert_eq!(pool(&hidden, 1, &mask, &[PoolingMode::Mean]), vec![2.0]);
        // Without exclusion the instruction dominates.
        let full = pool(&hidden, 1, &[1, 1, 1, 1, 1, 1, 0], &[PoolingMode::Mean]);
        assert!((full[0] - 33.0 / 6.0).abs() < 1e-6);
    }

    #[test]
    fn pooling_config_reads_include_prompt() {
        let config: PoolingConfig = serde_json::from_str(
            r#"{"word_embedding_dimension": 768, "pooling_mode_mean_tokens": true,
                "include_prompt": false}"#,
        )
        .unwrap();
        assert!(!config.include_prompt);
        assert_eq!(config.modes(), vec![PoolingMode::Mean]);
    }

    #[test]
    fn normalize_and_truncate() {
        let mut v = vec![3.0, 4.0, 12.0];
        truncate(&mut v, 2);
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
