//! Engine counters: requests, texts, batches and their sizes, time spent tokenizing and in
//! inference, how long jobs wait in the batcher's queue. Lock-free atomics updated by the
//! engine and batcher; `EngineMetrics` is a point-in-time snapshot for the proxy's metrics
//! endpoint (cache hits and misses are counted by the cache itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cache::EmbeddingCache;
use crate::histogram::{Histogram, HistogramSnapshot};

/// Upper bounds of the batch-size histogram buckets (the last bucket is unbounded).
pub const BATCH_SIZE_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    texts: AtomicU64,
    batches: AtomicU64,
    batched_texts: AtomicU64,
    max_batch: AtomicU64,
    batch_buckets: [AtomicU64; BATCH_SIZE_BUCKETS.len() + 1],
    queue_wait: Histogram,
    deduplicated: AtomicU64,
    abandoned: AtomicU64,
    inference_nanos: AtomicU64,
    tokenize_nanos: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    /// embed() calls.
    pub requests: u64,
    /// Texts asked for across all calls.
    pub texts: u64,
    /// Inference runs.
    pub batches: u64,
    /// Texts that went through inference (sum of batch sizes).
    pub batched_texts: u64,
    /// Largest batch run so far.
    pub max_batch_size: u64,
    /// Batch-size histogram: counts per `BATCH_SIZE_BUCKETS` upper bound, then the overflow.
    pub batch_size_buckets: Vec<u64>,
    /// Embedding cache lookups answered from it (local and remote models).
    pub cache_hits: u64,
    /// Embedding cache lookups that missed.
    pub cache_misses: u64,
    /// Time from a job's arrival in the batcher's queue to the start of its batch.
    pub queue_wait: HistogramSnapshot,
    /// Texts computed once for several identical inputs of a batch.
    pub deduplicated_texts: u64,
    /// Requests dropped because their caller had gone.
    pub abandoned_requests: u64,
    pub inference_seconds: f64,
    pub tokenize_seconds: f64,
    /// Models currently loaded.
    pub loaded_models: usize,
    /// Bytes held by the embedding cache.
    pub cache_bytes: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn request(&self, texts: usize) {
        add(&self.requests, 1);
        add(&self.texts, texts as u64);
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited);
    }

    pub fn batch(&self, size: usize, elapsed: Duration) {
        let size = size as u64;
        add(&self.batches, 1);
        add(&self.batched_texts, size);
        self.max_batch.fetch_max(size, Ordering::Relaxed);
        let bucket = BATCH_SIZE_BUCKETS
            .iter()
            .position(|&b| size <= b)
            .unwrap_or(BATCH_SIZE_BUCKETS.len());
        add(&self.batch_buckets[bucket], 1);
        add(&self.inference_nanos, elapsed.as_nanos() as u64);
    }

    pub fn tokenized(&self, elapsed: Duration) {
        add(&self.tokenize_nanos, elapsed.as_nanos() as u64);
    }

    pub fn deduplicated(&self, n: usize) {
        add(&self.deduplicated, n as u64);
    }

    pub fn abandoned(&self) {
        add(&self.abandoned, 1);
    }

    pub fn snapshot(&self, loaded_models: usize, cache: &EmbeddingCache) -> EngineMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineMetrics {
            requests: get(&self.requests),
            texts: get(&self.texts),
            batches: get(&self.batches),
            batched_texts: get(&self.batched_texts),
            max_batch_size: get(&self.max_batch),
            batch_size_buckets: self.batch_buckets.iter().map(get).collect(),
            cache_hits: cache.hits(),
            cache_misses: cache.misses(),
            queue_wait: self.queue_wait.snapshot(),
            deduplicated_texts: get(&self.deduplicated),
            abandoned_requests: get(&self.abandoned),
            inference_seconds: get(&self.inference_nanos) as f64 / 1e9,
            tokenize_seconds: get(&self.tokenize_nanos) as f64 / 1e9,
            loaded_models,
            cache_bytes: cache.bytes(),
        }
    }
}
