//! Computing the embeddings a statement needs: argument evaluation for constant calls, and
//! one engine request per (model, kwargs) group, deduplicated. Errors are kept per value, as
//! the `ProxyError` (and so the SQLSTATE) the client will see.

use std::collections::HashMap;
use std::sync::Arc;

use pgml_engine::Embedder;
use pgml_rewriter::ArgExpr;

use crate::error::ProxyError;

/// One embedding to compute: the three pgml.embed arguments as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmbedKey {
    /// Model name.
    pub model: String,
    /// kwargs JSON text.
    pub kwargs: String,
    /// The text to embed.
    pub text: String,
}

/// A failed embedding, shared by every value that failed the same way.
pub type Failure = Arc<ProxyError>;

/// Evaluates a constant argument. `param` gives the client's `$n` values (None = SQL NULL);
/// `Ok(None)` is SQL NULL; `Err` when a parameter is missing or not valid UTF-8.
pub fn evaluate(
    arg: &ArgExpr,
    param: &dyn Fn(usize) -> Result<Option<String>, ProxyError>,
) -> Result<Option<String>, ProxyError> {
    match arg {
        ArgExpr::Literal(s) => Ok(Some(s.clone())),
        ArgExpr::Null => Ok(None),
        ArgExpr::Default => Ok(Some("{}".to_owned())),
        ArgExpr::Param(n) => param(*n),
        ArgExpr::Concat(parts) => {
            let mut out = String::new();
            for part in parts {
                match evaluate(part, param)? {
                    Some(s) => out.push_str(&s),
                    None => return Ok(None),
                }
            }
            Ok(Some(out))
        }
        ArgExpr::Expr { .. } => Err(ProxyError::Internal(
            "a non-constant argument reached constant evaluation".into(),
        )),
    }
}

/// The key a call with constant arguments needs; `Ok(None)` when an argument is NULL (STRICT).
pub fn call_key(
    call: &pgml_rewriter::EmbedCall,
    param: &dyn Fn(usize) -> Result<Option<String>, ProxyError>,
) -> Result<Option<EmbedKey>, ProxyError> {
    let model = evaluate(&call.transformer, param)?;
    let text = evaluate(&call.input, param)?;
    let kwargs = evaluate(&call.kwargs, param)?;
    Ok(match (model, text, kwargs) {
        (Some(model), Some(text), Some(kwargs)) => Some(EmbedKey {
            model,
            kwargs,
            text,
        }),
        _ => None,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn no_params(_: usize) -> Result<Option<String>, ProxyError> {
        Ok(None)
    }

    #[test]
    fn concatenation_of_constants_is_evaluated_and_null_propagates() {
        let concat = ArgExpr::Concat(vec![
            ArgExpr::Literal("passage: ".into()),
            ArgExpr::Literal("hi".into()),
        ]);
        assert_eq!(
            evaluate(&concat, &no_params).unwrap().as_deref(),
            Some("passage: hi")
        );
        let with_null = ArgExpr::Concat(vec![ArgExpr::Literal("a".into()), ArgExpr::Null]);
        assert_eq!(evaluate(&with_null, &no_params).unwrap(), None);
        assert_eq!(
            evaluate(&ArgExpr::Default, &no_params).unwrap().as_deref(),
            Some("{}")
        );
        let param = |n: usize| Ok(Some(format!("p{n}")));
        assert_eq!(
            evaluate(&ArgExpr::Param(2), &param).unwrap().as_deref(),
            Some("p2")
        );
    }
}
