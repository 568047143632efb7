//! Computing the embeddings a statement needs: one engine request per (model, kwargs) group,
//! deduplicated, the groups concurrently. (Binding a call's arguments is the rewriter's.) Errors are kept per value, as
//! the `ProxyError` (and so the SQLSTATE) the client will see.

use std::collections::HashMap;
use std::sync::Arc;

use pgml_engine::Embedder;
use pgml_rewriter::BoundCall;

use crate::error::ProxyError;

/// One embedding to compute: the three pgml.embed arguments as text.
pub type EmbedKey = BoundCall;

/// A failed embedding, shared by every value that failed the same way.
pub type Failure = Arc<ProxyError>;

/// Computed values by key.
pub type Computed = HashMap<EmbedKey, Result<Arc<Vec<f32>>, Failure>>;

/// Computes every key, grouped by (model, kwargs), the groups concurrently.
pub async fn compute(engine: &dyn Embedder, keys: impl IntoIterator<Item = EmbedKey>) -> Computed {
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
                    .embed(&model, texts.clone(), &value)
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
