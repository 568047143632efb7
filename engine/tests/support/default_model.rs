#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run
#![allow(dead_code)] // each test binary uses a different subset
//! Shared by the engine's integration tests: the default model laid out by `make setup`, and an
//! engine that never downloads.

use std::path::PathBuf;

use pgml_engine::{Engine, EngineConfig};

/// The default model's hub id.
pub const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// A required environment variable (set by `make test` from .cache/env.mk).
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (run via make test or load .cache/env.mk)"))
}

/// The default model's snapshot directory in the hub cache.
pub fn snapshot_dir() -> PathBuf {
    hub_snapshot(MODEL)
}

/// The snapshot directory of `model` (a hub id laid out by `make setup`) in the hub cache.
pub fn hub_snapshot(model: &str) -> PathBuf {
    let repo = PathBuf::from(env("HF_HOME"))
        .join("hub")
        .join(format!("models--{}", model.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs/main"))
        .unwrap_or_else(|e| panic!("{model} laid out by make setup: {e}"));
    repo.join("snapshots").join(commit.trim())
}

/// An engine with the default configuration that never downloads; the tests' temporary
/// model directories are allowed, and the hub cache too, which some of them link into.
pub fn engine() -> Engine {
    Engine::new(EngineConfig {
        allow_download: false,
        allowed_model_dirs: vec![std::env::temp_dir(), PathBuf::from(env("HF_HOME"))],
        ..EngineConfig::default()
    })
    .expect("engine")
}
