//! Computing the embeddings a statement needs: one engine request per (model, kwargs) group,
//! deduplicated, the groups concurrently. (Binding a call's arguments is the rewriter's.) Errors are kept per value, as
//! the `ProxyError` (and so the SQLSTATE) the client will see.

use std::collections::HashMap;
use std::sync::Arc;

use pgml_engine::Embedder;
use pgml_rewriter::{BindError, BoundCall, EmbedCall};

use crate::error::ProxyError;

/// One embedding to compute: the three pgml.embed arguments as text.
pub type EmbedKey = BoundCall;

/// A failed embedding, shared by every value that failed the same way.
pub type Failure = Arc<ProxyError>;

/// The most text the constant calls of one statement (or one Bind) may bind in all: past it,
/// the remaining calls fail with 54000 instead of building strings without bound (each call's
/// own text is capped by the rewriter at Postgres' 1 GB, but not their sum).
pub const MAX_BOUND_BYTES: usize = 256 * 1024 * 1024;

/// Binds each call's arguments (see `EmbedCall::bind`) within [`MAX_BOUND_BYTES`] in all.
pub fn bind_calls(
    calls: impl IntoIterator<Item = impl std::borrow::Borrow<EmbedCall>>,
    param: &dyn Fn(usize) -> Result<Option<String>, BindError>,
) -> Vec<Result<Option<EmbedKey>, ProxyError>> {
    let mut total = 0usize;
    calls
        .into_iter()
        .map(|call| {
            if total > MAX_BOUND_BYTES {
                return Err(ProxyError::LimitExceeded(format!(
                    "pgml.embed arguments of one statement exceed {MAX_BOUND_BYTES} bytes"
                )));
            }
            let bound = call.borrow().bind(param)?;
            if let Some(b) = &bound {
                total = total.saturating_add(b.model.len() + b.text.len() + b.kwargs.len());
                if total > MAX_BOUND_BYTES {
                    return Err(ProxyError::LimitExceeded(format!(
                        "pgml.embed arguments of one statement exceed {MAX_BOUND_BYTES} bytes"
                    )));
                }
            }
            Ok(bound)
        })
        .collect()
}

/// Computed values by key.
pub type Computed = HashMap<EmbedKey, Result<Arc<Vec<f32>>, Failure>>;

/// What a bound call gets: its vector, None when an argument is NULL (STRICT), or the
/// failure to raise in its place.
pub fn lookup(
    key: Result<Option<EmbedKey>, ProxyError>,
    computed: &Computed,
) -> Result<Option<&[f32]>, Failure> {
    match key {
        Err(failure) => Err(Arc::new(failure)),
        Ok(None) => Ok(None),
        Ok(Some(key)) => match computed.get(&key) {
            Some(Ok(v)) => Ok(Some(v.as_slice())),
            Some(Err(failure)) => Err(failure.clone()),
            None => Ok(None),
        },
    }
}

/// Computes every key, grouped by (model, kwargs), the groups concurrently.
/// `partition`: whose cached vectors may be reused (see `Embedder::embed_in`).
pub async fn compute(
    engine: &dyn Embedder,
    partition: &str,
    keys: impl IntoIterator<Item = EmbedKey>,
) -> Computed {
    let mut groups: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if seen.insert(key.clone()) {
            groups
                .entry((key.model, key.kwargs))
                .or_default()
                .push(key.text);
        }
    }
    let jobs = groups
        .into_iter()
        .map(|((model, kwargs), texts)| async move {
            let outcome = match serde_json::from_str::<serde_json::Value>(&kwargs) {
                Err(source) => Err(ProxyError::InvalidJson {
                    function: "pgml.embed",
                    source,
                }),
                Ok(value) => engine
                    .embed_in(partition, &model, texts.clone(), &value)
                    .await
                    .map_err(ProxyError::from),
            };
            (model, kwargs, texts, outcome.map_err(Arc::new))
        });
    let mut out = Computed::new();
    for (model, kwargs, texts, outcome) in futures::future::join_all(jobs).await {
        let key = |text| EmbedKey {
            model: model.clone(),
            kwargs: kwargs.clone(),
            text,
        };
        match outcome {
            Ok(vectors) => {
                for (text, v) in texts.into_iter().zip(vectors) {
                    out.insert(key(text), Ok(Arc::new(v)));
                }
            }
            Err(failure) => {
                for text in texts {
                    out.insert(key(text), Err(failure.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_stops_at_the_statement_budget() {
        let plan = pgml_rewriter::plan_statement("SELECT pgml.embed('m', $1 || $1)", &[25]);
        let pgml_rewriter::StatementPlan::Constant(plan) = plan else {
            panic!("a constant plan: {plan:?}")
        };
        let big = "x".repeat(MAX_BOUND_BYTES / 4 - 8);
        let param = |_| Ok(Some(big.clone()));
        let calls = std::iter::repeat_n(&plan.calls()[0], 4);
        let bound = bind_calls(calls, &param);
        assert!(bound[0].is_ok() && bound[1].is_ok());
        let err = bound[2].as_ref().unwrap_err();
        assert_eq!(err.sqlstate(), "54000");
        assert!(bound[3].is_err());
    }
}
