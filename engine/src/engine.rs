//! `Engine`: the `Embedder` the proxy calls. Validates kwargs, finds the loaded model, serves
//! what it can from the cache and sends the rest through the batcher.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::batcher::Batcher;
use crate::cache::{CacheKey, EmbeddingCache};
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::kwargs::{Device, EmbedOptions};
use crate::metrics::{Counters, EngineMetrics};
use crate::model::LoadedModel;
use crate::precision::Precision;
use crate::rank::{self, CrossEncoderModel, RankOptions, RankedDoc};
use crate::registry::{Loadable, ModelKey, ModelRegistry};
use crate::resolve::{hub_dir_from_env, Resolver};
use crate::runtime::{self, SessionOptions};

mod limits;
use limits::InputLimits;

/// Turns texts into embeddings; the seam where a remote backend could replace the local engine.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// One vector per text, in order. kwargs is the pgml.embed kwargs JSON object.
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError>;

    /// As `embed`, with cached vectors shared only among calls of the same `partition` (the
    /// client's role, where the operator scopes the cache per role), so that the time a call
    /// takes tells nothing about texts embedded under another partition. `embed` is the
    /// shared partition `""`. Embedders without a cache need not override it.
    async fn embed_in(
        &self,
        partition: &str,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let _ = partition;
        self.embed(model, texts, kwargs).await
    }

    /// Output dimension for (model, kwargs) (truncate_dim honoured); loads the model if needed.
    async fn dimension(&self, model: &str, kwargs: &Value) -> Result<usize, EngineError>;
}

/// Ranks documents against a query with a cross-encoder (pgml.rank).
#[async_trait::async_trait]
pub trait Ranker: Send + Sync {
    /// CrossEncoder(model).rank(query, documents, **kwargs): rows sorted by score (descending,
    /// ties in document order), cut to top_k; `text` is the document when kwargs ask for
    /// return_documents. kwargs is the pgml.rank kwargs JSON object (see `RankOptions`).
    async fn rank(
        &self,
        model: &str,
        query: &str,
        documents: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<RankedDoc>, EngineError>;
}

/// The local embedding engine; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    registry: ModelRegistry<LoadedModel>,
    rankers: ModelRegistry<CrossEncoderModel>,
    batcher: Batcher,
    cache: EmbeddingCache,
    counters: Arc<Counters>,
    /// None = CUDA if available, falling back to CPU when a CUDA session cannot be built.
    default_device: Option<Device>,
    limits: InputLimits,
    /// Models that run in int8 unless kwargs say otherwise (`*` = all).
    int8_models: Vec<String>,
    /// Whether a refused int8 model runs in fp32 instead of failing.
    int8_fallback: bool,
    /// Int8 model keys the guard refused (consulted only with the fallback on).
    refused: Mutex<HashSet<ModelKey>>,
}

impl Engine {
    /// Builds an engine; ONNX Runtime is loaded now so a missing library fails early.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        runtime::environment(config.ort_dylib.as_deref())?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let session = SessionOptions {
            intra_threads: config.intra_threads.unwrap_or(cores),
            spinning: config.spinning,
        };
        let hub_dir = config
            .hub_cache_dir
            .clone()
            .unwrap_or_else(hub_dir_from_env);
        let resolver = Resolver::new(hub_dir, config.allow_download)
            .with_model_dirs(config.allowed_model_dirs.clone());
        let registry = ModelRegistry::new(
            resolver.clone(),
            session.clone(),
            config.ort_dylib.clone(),
            config.max_models,
            config.int8_min_cosine,
        );
        let rankers = ModelRegistry::new(
            resolver,
            session,
            config.ort_dylib.clone(),
            config.max_models,
            config.int8_min_cosine,
        );
        let counters = Arc::new(Counters::default());
        let batcher = Batcher::spawn(&config, Arc::clone(&counters))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                registry,
                rankers,
                batcher,
                cache: EmbeddingCache::new(config.cache_bytes),
                counters,
                default_device: config.default_device,
                limits: InputLimits {
                    text_bytes: config.max_text_bytes,
                    texts: config.max_texts_per_call,
                    call_bytes: config.max_call_bytes,
                },
                int8_models: config.int8_models.clone(),
                int8_fallback: config.int8_fallback,
                refused: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// A snapshot of the engine's counters.
    pub fn metrics(&self) -> EngineMetrics {
        self.inner
            .counters
            .snapshot(self.inner.registry.len(), &self.inner.cache)
    }

    /// A handle to the engine's embedding cache, for remote backends to share (`Router`).
    pub fn cache(&self) -> EmbeddingCache {
        self.inner.cache.clone()
    }

    /// Token ids the model sees for each text under kwargs (prompt included, truncated),
    /// for inspection and tests.
    pub async fn token_ids(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<u32>>, EngineError> {
        let options = EmbedOptions::from_json(kwargs)?;
        self.inner.limits.check(&texts)?;
        let (loaded, _) = self.model(model, &options).await?;
        let plan = loaded.plan(&options)?;
        let prompt = plan.prompt.unwrap_or_default();
        let texts = texts.into_iter().map(|t| format!("{prompt}{t}")).collect();
        let encodings =
            loaded
                .tokenizer
                .encode_batch(texts)
                .map_err(|reason| EngineError::Inference {
                    model: model.to_string(),
                    reason,
                })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The precision `model` runs in under `options`: kwargs' `precision`, else int8 when the
    /// operator listed the model (or `*`) in `int8_models`, else fp32.
    pub fn precision(&self, model: &str, options: &EmbedOptions) -> Precision {
        options.precision.unwrap_or_else(|| {
            let listed = self
                .inner
                .int8_models
                .iter()
                .any(|m| m == model || m == "*");
            if listed {
                Precision::Int8
            } else {
                Precision::Fp32
            }
        })
    }

    /// The loaded model for `options` and the precision it runs in: fp32 when the guard
    /// refused int8 and the operator allowed the fallback.
    async fn model(
        &self,
        model: &str,
        options: &EmbedOptions,
    ) -> Result<(Arc<LoadedModel>, Precision), EngineError> {
        let precision = self.precision(model, options);
        let key = ModelKey {
            model: model.to_string(),
            revision: options.revision.clone(),
            file_name: options.file_name.clone(),
            device: Device::Cpu,
            precision,
        };
        let fp32 = ModelKey {
            precision: Precision::Fp32,
            file_name: None,
            ..key.clone()
        };
        // A refusal is remembered, so that with the fallback on a refused model costs one
        // resolution (perhaps a download attempt), not one per call.
        let known_refused =
            self.inner.int8_fallback && self.inner.refused.lock().is_ok_and(|r| r.contains(&key));
        if known_refused {
            let loaded = self
                .load(&self.inner.registry, fp32, options.device)
                .await?;
            return Ok((loaded, Precision::Fp32));
        }
        match self
            .load(&self.inner.registry, key.clone(), options.device)
            .await
        {
            Err(EngineError::PrecisionRefused { reason, .. }) if self.inner.int8_fallback => {
                tracing::warn!(model, %reason, "int8 refused; running in fp32 (--int8-fallback)");
                if let Ok(mut refused) = self.inner.refused.lock() {
                    refused.insert(key);
                }
                let loaded = self
                    .load(&self.inner.registry, fp32, options.device)
                    .await?;
                Ok((loaded, Precision::Fp32))
            }
            other => other.map(|loaded| (loaded, precision)),
        }
    }

    /// The model of `key` on `device`, else the engine's default device, else CUDA when
    /// available (falling back to the CPU when its session fails).
    async fn load<M: Loadable>(
        &self,
        registry: &ModelRegistry<M>,
        key: ModelKey,
        device: Option<Device>,
    ) -> Result<Arc<M>, EngineError> {
        let on = |device| ModelKey {
            device,
            ..key.clone()
        };
        if let Some(device) = device.or(self.inner.default_device) {
            return registry.get(&on(device)).await;
        }
        match runtime::auto_device() {
            Device::Cpu => registry.get(&on(Device::Cpu)).await,
            gpu => match registry.get(&on(gpu)).await {
                Err(EngineError::ModelLoad { reason, .. }) => {
                    tracing::warn!(model = %key.model, %reason, "CUDA session failed; using the CPU");
                    registry.get(&on(Device::Cpu)).await
                }
                other => other,
            },
        }
    }

    /// Token ids of each (query, document) pair as the cross-encoder sees them (stripped,
    /// truncated, special tokens included), for inspection and tests.
    pub async fn rank_token_ids(
        &self,
        model: &str,
        query: &str,
        documents: Vec<String>,
    ) -> Result<Vec<Vec<u32>>, EngineError> {
        let loaded = self.ranker(model).await?;
        let query = query.to_string();
        let id = model.to_string();
        tokio::task::spawn_blocking(move || {
            loaded
                .token_ids(&query, &documents)
                .map_err(|reason| EngineError::Inference { model: id, reason })
        })
        .await
        .map_err(|e| EngineError::Runtime(format!("rank task failed: {e}")))?
    }

    async fn ranker(&self, model: &str) -> Result<Arc<CrossEncoderModel>, EngineError> {
        let key = ModelKey {
            model: model.to_string(),
            revision: None,
            file_name: None,
            device: Device::Cpu,
            precision: Precision::Fp32,
        };
        self.load(&self.inner.rankers, key, None).await
    }
}

#[async_trait::async_trait]
impl Ranker for Engine {
    async fn rank(
        &self,
        model: &str,
        query: &str,
        documents: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<RankedDoc>, EngineError> {
        let options = RankOptions::from_json(kwargs)?;
        self.inner.limits.check_all(
            documents.len().saturating_add(1),
            std::iter::once(query).chain(documents.iter().map(String::as_str)),
        )?;
        let loaded = self.ranker(model).await?;
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let query = query.to_string();
        let batch_size = options.batch_size;
        let (scores, documents) = tokio::task::spawn_blocking(move || {
            loaded
                .scores(&query, &documents, batch_size)
                .map(|scores| (scores, documents))
        })
        .await
        .map_err(|e| EngineError::Runtime(format!("rank task failed: {e}")))??;
        let mut documents: Vec<Option<String>> = documents.into_iter().map(Some).collect();
        Ok(rank::order(&scores, options.top_k)
            .into_iter()
            .map(|(corpus_id, score)| RankedDoc {
                corpus_id,
                score,
                text: if options.return_documents {
                    documents.get_mut(corpus_id).and_then(Option::take)
                } else {
                    None
                },
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl Embedder for Engine {
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_in("", model, texts, kwargs).await
    }

    async fn embed_in(
        &self,
        partition: &str,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let options = EmbedOptions::from_json(kwargs)?;
        self.inner.limits.check(&texts)?;
        self.inner.counters.request(texts.len());
        let (loaded, precision) = self.model(model, &options).await?;
        let plan = loaded.plan(&options)?;
        // Precision is part of the key: int8 and fp32 vectors of one text differ.
        let scope: Arc<str> = format!(
            "{partition}\u{0}{model}\u{0}{:?}\u{0}{:?}\u{0}{precision}\u{0}{}",
            options.revision,
            options.file_name,
            plan.cache_key()
        )
        .into();
        let (mut out, missing) = self.inner.cache.get_many(&scope, texts);
        if !missing.is_empty() {
            let inputs = missing
                .iter()
                .map(|(_, text)| match &plan.prompt {
                    Some(prompt) => format!("{prompt}{text}"),
                    None => text.clone(),
                })
                .collect();
            let raw = self
                .inner
                .batcher
                .submit(Arc::clone(&loaded), inputs, plan.excluded_tokens)
                .await?;
            for ((i, text), vector) in missing.into_iter().zip(raw) {
                let vector = plan.finish(vector);
                self.inner.cache.insert(
                    CacheKey {
                        scope: Arc::clone(&scope),
                        text,
                    },
                    vector.as_slice().into(),
                );
                out[i] = Some(vector);
            }
        }
        out.into_iter()
            .map(|v| {
                v.ok_or_else(|| EngineError::Inference {
                    model: model.to_string(),
                    reason: "missing vector".into(),
                })
            })
            .collect()
    }

    async fn dimension(&self, model: &str, kwargs: &Value) -> Result<usize, EngineError> {
        let options = EmbedOptions::from_json(kwargs)?;
        let (loaded, _) = self.model(model, &options).await?;
        let plan = loaded.plan(&options)?;
        Ok(plan.truncate_dim.unwrap_or(loaded.dimension()))
    }
}
