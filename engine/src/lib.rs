//! pgml-engine: (model, texts, kwargs) in, embeddings out, matching sentence-transformers.
//! Knows nothing about SQL or sockets; the proxy calls it through the `Embedder` trait.

mod batcher;
mod cache;
mod config;
mod engine;
mod error;
mod jsonl;
mod kwargs;
mod metrics;
mod model;
mod model_config;
pub mod pooling;
mod registry;
mod resolve;
mod runtime;
mod tokenize;

pub use config::EngineConfig;
pub use engine::{Embedder, Engine};
pub use error::EngineError;
pub use jsonl::embed_json_lines;
pub use kwargs::{Device, EmbedOptions};
pub use metrics::{EngineMetrics, BATCH_SIZE_BUCKETS};
pub use resolve::hub_dir_from_env;
