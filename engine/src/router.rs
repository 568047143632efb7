//! `Router`: the `Embedder` the proxy holds when some models are served remotely. It sends
//! each call to the backend routed for its model name and everything else to the local
//! engine; `parse_remote_route` reads the `--remote-model 'model=url'` syntax. Remote
//! vectors go into the embedding cache it is given, as local ones do.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::cache::EmbeddingCache;
use crate::engine::Embedder;
use crate::error::EngineError;
use crate::remote::{RemoteConfig, RemoteEmbedder};
use crate::remote_metrics::RemoteMetrics;

/// Splits `intfloat/e5-large=tei+http://tei:8080` into (model, backend URL), checking both.
pub fn parse_remote_route(spec: &str) -> Result<(String, String), EngineError> {
    let bad = |reason: &str| EngineError::RemoteConfig {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    // Model ids never contain '=', so the first one separates; the URL may contain more.
    let (model, url) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected MODEL=URL"))?;
    let (model, url) = (model.trim(), url.trim());
    if model.is_empty() {
        return Err(bad("model name is empty"));
    }
    RemoteEmbedder::new(url, RemoteConfig::default())?;
    Ok((model.to_string(), url.to_string()))
}

/// Routes embeddings by model name: remote backends for the routed models, local otherwise.
#[derive(Clone)]
pub struct Router {
    local: Arc<dyn Embedder>,
    routes: HashMap<String, Arc<dyn Embedder>>,
    /// One per backend URL, for their metrics.
    remotes: Vec<RemoteEmbedder>,
}

impl Router {
    /// A router over `local` with (model, URL) routes; models sharing a URL share one backend.
    /// Remote vectors are kept in `cache` (the local engine's, `Engine::cache`, to share it).
    pub fn new(
        local: Arc<dyn Embedder>,
        routes: Vec<(String, String)>,
        config: RemoteConfig,
        cache: EmbeddingCache,
    ) -> Result<Router, EngineError> {
        let mut backends: HashMap<String, Arc<dyn Embedder>> = HashMap::new();
        let mut remotes = Vec::new();
        let mut table = HashMap::new();
        for (model, url) in routes {
            let backend = match backends.get(&url) {
                Some(backend) => Arc::clone(backend),
                None => {
                    let remote = RemoteEmbedder::with_cache(&url, config.clone(), cache.clone())?;
                    remotes.push(remote.clone());
                    let backend: Arc<dyn Embedder> = Arc::new(remote);
                    backends.insert(url.clone(), Arc::clone(&backend));
                    backend
                }
            };
            if table.insert(model.clone(), backend).is_some() {
                return Err(EngineError::RemoteConfig {
                    spec: format!("{model}={url}"),
                    reason: format!("model \"{model}\" is routed twice"),
                });
            }
        }
        Ok(Router {
            local,
            routes: table,
            remotes,
        })
    }

    /// A router from `--remote-model` values (`MODEL=URL` each).
    pub fn from_specs(
        local: Arc<dyn Embedder>,
        specs: &[String],
        config: RemoteConfig,
        cache: EmbeddingCache,
    ) -> Result<Router, EngineError> {
        let routes = specs
            .iter()
            .map(|spec| parse_remote_route(spec))
            .collect::<Result<Vec<_>, _>>()?;
        Router::new(local, routes, config, cache)
    }

    /// Every remote backend's requests, retries, errors and latency, by model.
    pub fn remote_metrics(&self) -> Vec<RemoteMetrics> {
        self.remotes
            .iter()
            .flat_map(RemoteEmbedder::metrics)
            .collect()
    }

    /// Whether `model` is served by a remote backend.
    pub fn is_remote(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The remotely served model names, sorted (for start-up logs).
    pub fn remote_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self.routes.keys().cloned().collect();
        models.sort();
        models
    }

    fn backend(&self, model: &str) -> &Arc<dyn Embedder> {
        self.routes.get(model).unwrap_or(&self.local)
    }
}

#[async_trait::async_trait]
impl Embedder for Router {
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.backend(model).embed(model, texts, kwargs).await
    }

    async fn embed_in(
        &self,
        partition: &str,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.backend(model)
            .embed_in(partition, model, texts, kwargs)
            .await
    }

    async fn dimension(&self, model: &str, kwargs: &Value) -> Result<usize, EngineError> {
        self.backend(model).dimension(model, kwargs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_at_the_first_equals_sign() {
        let (model, url) = parse_remote_route("intfloat/e5-large=tei+http://tei:8080").unwrap();
        assert_eq!(model, "intfloat/e5-large");
        assert_eq!(url, "tei+http://tei:8080");
        let (model, url) = parse_remote_route(" m = openai+https://h/a=b ").unwrap();
        assert_eq!(
            (model.as_str(), url.as_str()),
            ("m", "openai+https://h/a=b")
        );
    }

    #[test]
    fn malformed_routes_are_config_errors() {
        for spec in [
            "no-equals",
            "=http://h",
            "m=",
            "m=ftp://h",
            "m=grpc+http://h",
        ] {
            let err = parse_remote_route(spec).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{spec}: {err}");
        }
    }
}
