//! Engine configuration: where models come from, how much memory the cache and loaded
//! models may take, and the batching and threading knobs (defaults measured on CPU).

use std::path::PathBuf;
use std::time::Duration;

use crate::kwargs::Device;
use crate::precision::DEFAULT_INT8_MIN_COSINE;

/// Default `max_text_bytes`: 4 MiB. Models read at most a few thousand tokens, and long texts
/// are tokenized by a prefix (see `tokenize.rs`), so this only bounds memory and the rare
/// whole-text tokenization; a "1 MB document" still embeds, as PostgresML's would.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// Default `max_texts_per_call`.
pub const DEFAULT_MAX_TEXTS_PER_CALL: usize = 65_536;
/// Default `max_call_bytes`: 64 MiB.
pub const DEFAULT_MAX_CALL_BYTES: usize = 64 * 1024 * 1024;

/// How an `Engine` is set up. `Default` suits a CPU machine with the env from `make setup`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Hub cache directory; None = HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
    pub hub_cache_dir: Option<PathBuf>,
    /// libonnxruntime to load; None = ORT_DYLIB_PATH.
    pub ort_dylib: Option<PathBuf>,
    /// Download models missing from the cache; off unless the operator enables it
    /// (HF_HUB_OFFLINE=1 forbids it regardless).
    pub allow_download: bool,
    /// Directories a model may be loaded from by path (absolute, or a name below one of them);
    /// empty = hub ids only. Symlinks are followed and must stay inside.
    pub allowed_model_dirs: Vec<PathBuf>,
    /// Longest text accepted, in bytes (UTF-8); longer ones fail with 54000.
    pub max_text_bytes: usize,
    /// Most texts in one embed call; more fail with 54000.
    pub max_texts_per_call: usize,
    /// Most text bytes in one embed call (all texts together); more fail with 54000.
    pub max_call_bytes: usize,
    /// Embedding cache capacity in bytes (0 disables the cache).
    pub cache_bytes: u64,
    /// Most models loaded at once (least recently used is dropped first).
    pub max_models: usize,
    /// ONNX Runtime intra-op threads per session; None = the cores available.
    pub intra_threads: Option<usize>,
    /// Let idle intra-op threads spin (faster hand-off, but competes with tokenization).
    pub spinning: bool,
    /// Token budget of one inference batch (batch size x padded length); None = per device.
    pub max_batch_tokens: Option<usize>,
    /// Most texts in one inference batch; None = per device.
    pub max_batch_texts: Option<usize>,
    /// How long the batcher waits for more requests after the first one arrives.
    pub max_wait: Duration,
    /// Pending requests before callers wait (back-pressure).
    pub queue_capacity: usize,
    /// Device when kwargs name none; None = CUDA when available, else CPU (as PostgresML).
    pub default_device: Option<Device>,
    /// Models that run in int8 when kwargs name no precision (`*` = every model); the others
    /// run in fp32. Int8 needs the model's `onnx/model_int8.onnx` and its fidelity record.
    pub int8_models: Vec<String>,
    /// The fidelity guard's floor: an int8 file whose recorded minimum cosine against fp32 is
    /// below it is refused.
    pub int8_min_cosine: f64,
    /// Run a refused int8 model in fp32 (with a warning) instead of failing the call.
    pub int8_fallback: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hub_cache_dir: None,
            ort_dylib: None,
            allow_download: false,
            allowed_model_dirs: Vec::new(),
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_texts_per_call: DEFAULT_MAX_TEXTS_PER_CALL,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
            cache_bytes: 256 * 1024 * 1024,
            max_models: 4,
            intra_threads: None,
            spinning: false,
            max_batch_tokens: None,
            max_batch_texts: None,
            max_wait: Duration::from_millis(2),
            queue_capacity: 1024,
            default_device: None,
            int8_models: Vec::new(),
            int8_min_cosine: DEFAULT_INT8_MIN_COSINE,
            int8_fallback: false,
        }
    }
}

/// Batch limits for one device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub tokens: usize,
    pub texts: usize,
}

impl EngineConfig {
    /// CPU: small length-sorted batches win (padding and cache pressure grow with batch size);
    /// GPU: big batches keep the device busy.
    pub(crate) fn limits(&self, device: Device) -> BatchLimits {
        let (tokens, texts) = match device {
            Device::Cpu => (2048, 16),
            Device::Cuda(_) => (65536, 256),
        };
        BatchLimits {
            tokens: self.max_batch_tokens.unwrap_or(tokens).max(1),
            texts: self.max_batch_texts.unwrap_or(texts).max(1),
        }
    }
}
