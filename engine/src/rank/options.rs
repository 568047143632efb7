//! pgml.rank's kwargs: CrossEncoder.rank's parameters, validated into `RankOptions`.

use serde_json::Value;

use super::{DEFAULT_RANK_BATCH_SIZE, MAX_RANK_BATCH_SIZE};
use crate::error::EngineError;
use crate::kwargs;
use crate::paths;

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
