//! pgml-engine: (model, texts, kwargs) in, embeddings out, matching sentence-transformers;
//! and (model, query, documents, kwargs) in, ranked documents out (`Ranker`, pgml.rank),
//! matching sentence-transformers' CrossEncoder.rank.
//! Knows nothing about SQL; the proxy calls it through the `Embedder` trait, and `Router`
//! sends chosen models to a remote backend (TEI or OpenAI-compatible) over HTTP. `Generator`
//! serves pgml.transform(_stream) from OpenAI-compatible servers, routed the same way.

mod batcher;
mod cache;
mod config;
mod engine;
mod error;
mod generate;
mod histogram;
mod jsonl;
mod kwargs;
mod metrics;
mod model;
mod model_config;
pub mod paths;
pub mod pooling;
mod precision;
mod rank;
mod registry;
mod remote;
mod remote_endpoint;
mod remote_http;
mod remote_metrics;
mod remote_options;
mod resolve;
mod router;
mod routes;
mod runtime;
mod tokenize;

pub use cache::EmbeddingCache;
pub use config::{
    EngineConfig, DEFAULT_MAX_CALL_BYTES, DEFAULT_MAX_TEXTS_PER_CALL, DEFAULT_MAX_TEXT_BYTES,
};
pub use engine::{Embedder, Engine, Ranker};
pub use error::EngineError;
pub use generate::{
    probe_route, GenerateRequest, GenerateTask, Generator, DEFAULT_GENERATE_IN_FLIGHT,
    MAX_GENERATE_INPUTS,
};
pub use histogram::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};
pub use jsonl::embed_json_lines;
pub use kwargs::{Device, EmbedOptions, MAX_BATCH_SIZE};
pub use metrics::{EngineMetrics, BATCH_SIZE_BUCKETS};
pub use precision::{int8_status, Fidelity, Precision, DEFAULT_INT8_MIN_COSINE, INT8_FILE};
pub use rank::{RankOptions, RankedDoc, DEFAULT_RANK_BATCH_SIZE, MAX_RANK_BATCH_SIZE};
pub use remote::{RemoteConfig, RemoteEmbedder, REMOTE_TOKEN_ENV};
pub use remote_endpoint::{RemoteApi, RemoteEndpoint};
pub use remote_metrics::RemoteMetrics;
pub use resolve::{cached_models, hub_dir_from_env};
pub use router::{parse_remote_route, Router};
pub use runtime::{describe as describe_runtime, RuntimeInfo};
