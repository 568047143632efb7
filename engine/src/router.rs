//! `Router`: the `Embedder` the proxy holds when some models are served remotely. It sends
//! each call to the backend routed for its model name and everything else to the local
//! engine; `parse_remote_route` reads the `--remote-model 'model=url'` syntax, where model may
//! be a pattern (`org/*`, `*`) matched as `routes.rs` says. Remote vectors go into the
//! embedding cache it is given, as local ones do.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::cache::EmbeddingCache;
use crate::engine::Embedder;
use crate::error::EngineError;
use crate::remote::{RemoteConfig, RemoteEmbedder};
use crate::remote_metrics::RemoteMetrics;
use crate::routes::{check_route_name, RouteTable};

/// Splits `intfloat/e5-large=tei+http://tei:8080` into (model, backend URL), checking both;
/// the model may be a pattern ending in `*` (`meta-llama/*=http://vllm:8000/v1`).
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
    check_route_name(model).map_err(|reason| bad(&reason))?;
    RemoteEmbedder::new(url, RemoteConfig::default())?;
    Ok((model.to_string(), url.to_string()))
}

/// Routes embeddings by model name: remote backends for the routed models, local otherwise.
#[derive(Clone)]
pub struct Router {
    local: Arc<dyn Embedder>,
    routes: Arc<RouteTable<Arc<dyn Embedder>>>,
    /// One per backend URL, for their metrics.
    remotes: Vec<RemoteEmbedder>,
}

impl Router {
    /// A router over `local` with (model or pattern, URL) routes; models sharing a URL share
    /// one backend.
    /// Remote vectors are kept in `cache` (the local engine's, `Engine::cache`, to share it).
    pub fn new(
        local: Arc<dyn Embedder>,
        routes: Vec<(String, String)>,
        config: RemoteConfig,
        cache: EmbeddingCache,
    ) -> Result<Router, EngineError> {
        let mut backends: HashMap<String, Arc<dyn Embedder>> = HashMap::new();
        let mut remotes = Vec::new();
        let mut table = RouteTable::default();
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
            table
                .insert(&model, backend)
                .map_err(|reason| EngineError::RemoteConfig {
                    spec: format!("{model}={url}"),
                    reason,
                })?;
        }
        Ok(Router {
            local,
            routes: Arc::new(table),
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

    /// Whether `model` is served by a remote backend (by name or by a pattern).
    pub fn is_remote(&self, model: &str) -> bool {
        self.routes.lookup(model).is_some()
    }

    /// The remotely served model names and patterns, sorted (for start-up logs).
    pub fn remote_models(&self) -> Vec<String> {
        self.routes.names()
    }

    fn backend(&self, model: &str) -> &Arc<dyn Embedder> {
        self.routes
            .lookup(model)
            .map_or(&self.local, |(_, backend)| backend)
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
    use crate::generate::test_server::{Recorded, Reply, TestServer};
    use serde_json::json;
    use std::time::Duration;

    /// An OpenAI embeddings server whose vectors are `[id, 1]`, telling servers apart.
    fn embeddings(id: f32) -> TestServer {
        TestServer::start(move |r: &Recorded| {
            let n = r.body["input"].as_array().map_or(0, Vec::len);
            let data: Vec<Value> = (0..n)
                .map(|i| json!({"embedding": [id, 1.0], "index": i}))
                .collect();
            Reply::Json {
                status: 200,
                body: json!({"data": data}),
                delay: Duration::ZERO,
            }
        })
    }

    #[tokio::test]
    async fn pattern_routes_serve_embeddings_by_the_generators_rule() {
        let (local, org, special, star) = (
            embeddings(0.0),
            embeddings(1.0),
            embeddings(2.0),
            embeddings(3.0),
        );
        let config = RemoteConfig::default();
        let local: Arc<dyn Embedder> = Arc::new(
            RemoteEmbedder::new(&format!("openai+{}", local.base()), config.clone()).unwrap(),
        );
        let routes = vec![
            ("org/*".to_string(), org.base()),
            ("org/special".to_string(), special.base()),
        ];
        let router = Router::new(
            Arc::clone(&local),
            routes.clone(),
            config.clone(),
            EmbeddingCache::new(0),
        )
        .unwrap();
        let first = |v: Vec<Vec<f32>>| v[0][0];
        let embed = |router: &Router, model: &str| {
            let router = router.clone();
            let model = model.to_string();
            async move {
                router
                    .embed(&model, vec!["t".into()], &Value::Null)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(first(embed(&router, "org/special").await), 2.0);
        assert_eq!(first(embed(&router, "org/any").await), 1.0);
        assert_eq!(first(embed(&router, "other/model").await), 0.0);
        assert!(router.is_remote("org/any") && !router.is_remote("other/model"));
        assert_eq!(router.remote_models(), vec!["org/*", "org/special"]);
        // A plain http URL ending in /v1 is an OpenAI base: POSTed at /v1/embeddings.
        assert_eq!(org.seen.requests()[0].path, "/v1/embeddings");

        let mut with_star = routes;
        with_star.push(("*".to_string(), star.base()));
        let router = Router::new(local, with_star, config, EmbeddingCache::new(0)).unwrap();
        assert_eq!(first(embed(&router, "other/model").await), 3.0);
        assert_eq!(first(embed(&router, "org/any").await), 1.0);
    }

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
    fn patterns_are_routes_with_a_trailing_star() {
        let (model, _) = parse_remote_route("meta-llama/*=http://vllm:8000/v1").unwrap();
        assert_eq!(model, "meta-llama/*");
        assert_eq!(parse_remote_route("*=http://h/v1").unwrap().0, "*");
    }

    #[test]
    fn malformed_routes_are_config_errors() {
        for spec in [
            "no-equals",
            "a*b=http://h",
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
