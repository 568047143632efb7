//! The embedding cache: moka, weighted by bytes, keyed by (model, effective kwargs, text).
//! Values are the final vectors (after truncation and normalisation), shared by Arc.

use std::sync::Arc;

use moka::sync::Cache;

/// Key: `scope` names the model and everything in kwargs that changes the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub scope: Arc<str>,
    pub text: String,
}

/// Bookkeeping bytes per entry beyond the text and floats (moka node, Arc headers).
const ENTRY_OVERHEAD: usize = 96;

pub(crate) struct EmbeddingCache {
    inner: Option<Cache<CacheKey, Arc<[f32]>>>,
}

impl EmbeddingCache {
    /// A cache holding at most `bytes` (0 disables caching).
    pub fn new(bytes: u64) -> Self {
        let inner = (bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &CacheKey, value: &Arc<[f32]>| {
                    let size = key.text.len() + value.len() * 4 + ENTRY_OVERHEAD;
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .build()
        });
        EmbeddingCache { inner }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<[f32]>> {
        self.inner.as_ref()?.get(key)
    }

    pub fn insert(&self, key: CacheKey, value: Arc<[f32]>) {
        if let Some(cache) = &self.inner {
            cache.insert(key, value);
        }
    }

    /// Bytes currently held (moka's weighted size, eventually consistent).
    pub fn bytes(&self) -> u64 {
        self.inner.as_ref().map(|c| c.weighted_size()).unwrap_or(0)
    }
}
