//! ONNX Runtime: the process-wide environment (loaded from ORT_DYLIB_PATH) and session
//! construction per device. Knows nothing of tokenizers or pooling.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::error::EngineError;
use crate::kwargs::Device;

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin; off avoids stealing cores from tokenization.
    pub spinning: bool,
}

/// A transformer graph's input names (checked: only input_ids, attention_mask and
/// token_type_ids, input_ids among them) and output names, in the graph's order. `err` turns
/// a reason into the caller's load error.
pub fn graph_io(
    session: &Session,
    err: impl Fn(String) -> EngineError,
) -> Result<(Vec<String>, Vec<String>), EngineError> {
    let inputs: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .collect();
    for name in &inputs {
        if !matches!(
            name.as_str(),
            "input_ids" | "attention_mask" | "token_type_ids"
        ) {
            return Err(err(format!("unsupported graph input \"{name}\"")));
        }
    }
    if !inputs.iter().any(|n| n == "input_ids") {
        return Err(err("graph has no input_ids input".to_string()));
    }
    let outputs = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    Ok((inputs, outputs))
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The shared ONNX Runtime environment, created on first use from `dylib`
/// (else ORT_DYLIB_PATH, else the system's libonnxruntime.so).
pub fn environment(dylib: Option<&Path>) -> Result<Environment, EngineError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = dylib
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
        let builder = ort::init_from(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        builder
            .with_name("pgml-engine")
            .build()
            .map_err(|e| e.to_string())
    });
    result.clone().map_err(EngineError::Runtime)
}

/// Builds a session for the ONNX file at `path` on `device`.
pub fn build_session(
    env: &Environment,
    model: &str,
    path: &Path,
    device: Device,
    options: &SessionOptions,
) -> Result<Session, EngineError> {
    let load_err = |reason: String| EngineError::ModelLoad {
        model: model.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
    let builder = builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| load_err(e.to_string()))?
        .with_intra_threads(options.intra_threads.max(1))
        .map_err(|e| load_err(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| load_err(e.to_string()))?
        .with_config_entry(
            "session.intra_op.allow_spinning",
            if options.spinning { "1" } else { "0" },
        )
        .map_err(|e| load_err(e.to_string()))?;
    let mut builder = with_device(builder, device).map_err(|e| load_err(e.to_string()))?;
    builder
        .commit_from_file(path)
        .map_err(|e| load_err(e.to_string()))
}

#[cfg(feature = "cuda")]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda(ordinal) => builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(ordinal)
                .build()
                .error_on_failure()])
            .map_err(|e| EngineError::Runtime(format!("CUDA execution provider on {device}: {e}"))),
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda(_) => Err(cuda_unsupported()),
    }
}

/// The error for a CUDA device in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn cuda_unsupported() -> EngineError {
    EngineError::bad(
        "device",
        "this build has no CUDA support (cargo feature \"cuda\" is off)",
    )
}

/// The device used when kwargs name none: CUDA when this build and the runtime support it.
pub fn auto_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        use ort::ep::ExecutionProvider;
        if matches!(ort::ep::CUDA::is_available(), Ok(true)) {
            return Device::Cuda(0);
        }
    }
    Device::Cpu
}
