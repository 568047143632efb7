//! The embedding cache: moka, weighted by bytes, keyed by (scope, text), where the scope names
//! the model (or the remote backend and model) and everything in kwargs that changes the
//! output. Values are the final vectors (after truncation and normalisation), shared by Arc.
//! The local engine and the remote backends share one cache, and its hit and miss counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use moka::sync::Cache;

/// Key: `scope` names the model and everything in kwargs that changes the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub scope: Arc<str>,
    pub text: String,
}

/// A batch looked up: per text its cached vector (or None), and the texts that missed with
/// their positions.
pub(crate) type Lookup = (Vec<Option<Vec<f32>>>, Vec<(usize, String)>);

/// Bookkeeping bytes per entry beyond the text and floats (moka node, Arc headers).
const ENTRY_OVERHEAD: usize = 96;

/// A handle to an embedding cache; clones share the entries, the byte budget and the counts.
#[derive(Clone)]
pub struct EmbeddingCache {
    inner: Option<Cache<CacheKey, Arc<[f32]>>>,
    stats: Arc<CacheStats>,
}

#[derive(Default)]
struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl EmbeddingCache {
    /// A cache holding at most `bytes` (0 disables caching: every lookup misses).
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
        EmbeddingCache {
            inner,
            stats: Arc::default(),
        }
    }

    /// The vector cached for `key`, counted as a hit or a miss.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<[f32]>> {
        let found = self.inner.as_ref().and_then(|cache| cache.get(key));
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Looks up every text under `scope`: per text its cached vector (or None), and the texts
    /// that missed with their positions, in order.
    pub(crate) fn get_many(&self, scope: &Arc<str>, texts: Vec<String>) -> Lookup {
        let mut out = Vec::with_capacity(texts.len());
        let mut missing = Vec::new();
        for (i, text) in texts.into_iter().enumerate() {
            let key = CacheKey {
                scope: Arc::clone(scope),
                text,
            };
            match self.get(&key) {
                Some(hit) => out.push(Some(hit.to_vec())),
                None => {
                    out.push(None);
                    missing.push((i, key.text));
                }
            }
        }
        (out, missing)
    }

    pub(crate) fn insert(&self, key: CacheKey, value: Arc<[f32]>) {
        if let Some(cache) = &self.inner {
            cache.insert(key, value);
        }
    }

    /// Bytes currently held (moka's weighted size, eventually consistent).
    pub fn bytes(&self) -> u64 {
        self.inner.as_ref().map(|c| c.weighted_size()).unwrap_or(0)
    }

    /// Lookups answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::Relaxed)
    }

    /// Lookups that missed so far.
    pub fn misses(&self) -> u64 {
        self.stats.misses.load(Ordering::Relaxed)
    }
}
