//! The model registry: one loaded model per (model, revision, file, device, precision), shared by every
//! caller, with a least-recently-used bound on how many stay loaded. Loads run on tokio's
//! blocking pool, one at a time, so two callers never load the same model twice.
//! Generic over what a model loads as: embedding models (`LoadedModel`) and cross-encoders
//! (`CrossEncoderModel`) each have a registry.

use std::sync::{Arc, Mutex};

use crate::error::EngineError;
use crate::kwargs::Device;
use crate::precision::{self, Precision, INT8_FILE};
use crate::resolve::{ModelFiles, Resolver};
use crate::runtime::{self, SessionOptions};

/// What identifies a loaded model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ModelKey {
    pub model: String,
    pub revision: Option<String>,
    pub file_name: Option<String>,
    pub device: Device,
    /// Int8 loads `file_name` or `onnx/model_int8.onnx`, admitted by the fidelity guard.
    pub precision: Precision,
}

/// How a registry turns resolved files into a loaded model.
pub(crate) trait Loadable: Sized + Send + Sync + 'static {
    fn load(
        id: &str,
        files: &ModelFiles,
        device: Device,
        options: &SessionOptions,
        env: &ort::environment::Environment,
    ) -> Result<Self, EngineError>;
}

pub(crate) struct ModelRegistry<M> {
    resolver: Resolver,
    session: SessionOptions,
    ort_dylib: Option<std::path::PathBuf>,
    max_models: usize,
    /// The fidelity guard's floor for int8 files (see `precision::admit`).
    int8_min_cosine: f64,
    /// Most recently used last.
    loaded: Mutex<Vec<(ModelKey, Arc<M>)>>,
    loading: tokio::sync::Mutex<()>,
}

impl<M: Loadable> ModelRegistry<M> {
    pub fn new(
        resolver: Resolver,
        session: SessionOptions,
        ort_dylib: Option<std::path::PathBuf>,
        max_models: usize,
        int8_min_cosine: f64,
    ) -> Self {
        ModelRegistry {
            resolver,
            session,
            ort_dylib,
            max_models: max_models.max(1),
            int8_min_cosine,
            loaded: Mutex::new(Vec::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Number of models loaded now.
    pub fn len(&self) -> usize {
        self.loaded.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn lookup(&self, key: &ModelKey) -> Option<Arc<M>> {
        let mut loaded = self.loaded.lock().ok()?;
        let pos = loaded.iter().position(|(k, _)| k == key)?;
        let entry = loaded.remove(pos);
        let model = Arc::clone(&entry.1);
        loaded.push(entry);
        Some(model)
    }

    /// The loaded model for `key`, loading it (and evicting the least recently used) if needed.
    pub async fn get(&self, key: &ModelKey) -> Result<Arc<M>, EngineError> {
        if let Some(model) = self.lookup(key) {
            return Ok(model);
        }
        let _guard = self.loading.lock().await;
        if let Some(model) = self.lookup(key) {
            return Ok(model);
        }
        let resolver = self.resolver.clone();
        let session = self.session.clone();
        let dylib = self.ort_dylib.clone();
        let load_key = key.clone();
        let floor = self.int8_min_cosine;
        let model = tokio::task::spawn_blocking(move || {
            let env = runtime::environment(dylib.as_deref())?;
            let revision = load_key.revision.as_deref();
            let file_name = match load_key.precision {
                Precision::Int8 => Some(load_key.file_name.as_deref().unwrap_or(INT8_FILE)),
                Precision::Fp32 => load_key.file_name.as_deref(),
            };
            let files = match resolver.resolve(&load_key.model, revision, file_name) {
                // A model that is there without its int8 file is refused as int8, not missing.
                Err(EngineError::ModelNotCached { .. } | EngineError::ModelNotFound { .. })
                    if load_key.precision == Precision::Int8
                        && resolver.resolve(&load_key.model, revision, None).is_ok() =>
                {
                    return Err(EngineError::PrecisionRefused {
                        model: load_key.model.clone(),
                        reason: format!("it has no int8 file ({})", file_name.unwrap_or(INT8_FILE)),
                    });
                }
                other => other?,
            };
            let fidelity = precision::admit(&load_key.model, load_key.precision, &files, floor)?;
            tracing::info!(model = %load_key.model, device = %load_key.device, precision = %load_key.precision, onnx = %files.onnx.display(), fidelity = ?fidelity, "loading model");
            M::load(&load_key.model, &files, load_key.device, &session, &env)
        })
        .await
        .map_err(|e| EngineError::Runtime(format!("model loader task failed: {e}")))??;
        let model = Arc::new(model);
        if let Ok(mut loaded) = self.loaded.lock() {
            while loaded.len() >= self.max_models {
                let (evicted, _) = loaded.remove(0);
                tracing::info!(model = %evicted.model, device = %evicted.device, precision = %evicted.precision, "unloading least recently used model");
            }
            loaded.push((key.clone(), Arc::clone(&model)));
        }
        Ok(model)
    }
}
