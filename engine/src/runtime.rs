//! ONNX Runtime: the process-wide environment (loaded from ORT_DYLIB_PATH) and session
//! construction per device. Knows nothing of tokenizers or pooling.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use std::borrow::Cow;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use tokenizers::Encoding;

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

/// A batch of encodings padded to its longest member, as a transformer graph's inputs.
pub struct PaddedBatch {
    /// The inputs under the graph's own names, each `[rows, seq]` int64.
    pub inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)>,
    /// The attention mask, row-major `[rows, seq]` (for pooling).
    pub mask: Vec<i64>,
    /// The padded length.
    pub seq: usize,
}

/// Pads `encodings` (ids with `pad_id`, mask and token types with 0) and builds the inputs
/// named in `input_names` (checked by [`graph_io`]: input_ids, attention_mask, token_type_ids).
pub fn padded_batch<'e>(
    encodings: impl ExactSizeIterator<Item = &'e Encoding> + Clone,
    pad_id: u32,
    input_names: &[String],
) -> Result<PaddedBatch, ort::Error> {
    let rows = encodings.len();
    let seq = encodings
        .clone()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![i64::from(pad_id); rows * seq];
    let mut mask = vec![0i64; rows * seq];
    let mut types = vec![0i64; rows * seq];
    for (row, e) in encodings.enumerate() {
        let base = row * seq;
        for (j, ((&id, &m), &t)) in e
            .get_ids()
            .iter()
            .zip(e.get_attention_mask())
            .zip(e.get_type_ids())
            .enumerate()
        {
            ids[base + j] = i64::from(id);
            mask[base + j] = i64::from(m);
            types[base + j] = i64::from(t);
        }
    }
    let mut inputs = Vec::with_capacity(input_names.len());
    for name in input_names {
        let data = match name.as_str() {
            "input_ids" => std::mem::take(&mut ids),
            "attention_mask" => mask.clone(),
            _ => std::mem::take(&mut types),
        };
        let tensor = Tensor::from_array(([rows, seq], data))?;
        inputs.push((Cow::Owned(name.clone()), tensor.into()));
    }
    Ok(PaddedBatch { inputs, mask, seq })
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

/// Where the ONNX Runtime library is taken from: `dylib` (the caller's setting), else
/// ORT_DYLIB_PATH, else the system's `libonnxruntime.so`; and a phrase saying which.
pub fn dylib_location(dylib: Option<&Path>) -> (PathBuf, &'static str) {
    if let Some(path) = dylib {
        return (
            path.to_path_buf(),
            "from --ort-dylib, ORT_DYLIB_PATH or a settings file",
        );
    }
    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(path) => (PathBuf::from(path), "from ORT_DYLIB_PATH"),
        None => (
            PathBuf::from("libonnxruntime.so"),
            "on the system library path, as neither --ort-dylib nor ORT_DYLIB_PATH is set",
        ),
    }
}

/// The shared ONNX Runtime environment, created on first use from `dylib`
/// (else ORT_DYLIB_PATH, else the system's libonnxruntime.so).
pub fn environment(dylib: Option<&Path>) -> Result<Environment, EngineError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let (path, origin) = dylib_location(dylib);
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load {} ({origin}): {e}. Fix: run `make setup` in the pgml-proxy checkout \
                 (it installs ONNX Runtime into .venv and records its path next to the binary), \
                 or point --ort-dylib or ORT_DYLIB_PATH at a libonnxruntime.so (pip install \
                 onnxruntime puts one in site-packages/onnxruntime/capi/)",
                path.display()
            )
        })?;
        builder
            .with_name("pgml-engine")
            .build()
            .map_err(|e| e.to_string())
    });
    result.clone().map_err(EngineError::Runtime)
}

/// What the loaded ONNX Runtime is: its version, where it came from, and the execution
/// providers it was built with.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// The library file asked for.
    pub path: PathBuf,
    /// Where that path came from (the caller's setting, ORT_DYLIB_PATH, the system).
    pub origin: &'static str,
    /// The version (`1.22.0`, from the release branch in the build information or the
    /// library's file name) and the build's commit, as far as they can be told.
    pub version: String,
    /// Execution providers ONNX Runtime reports as compiled in (`CPUExecutionProvider`, ...).
    pub providers: Vec<&'static str>,
    /// Whether this build of the engine can use CUDA (cargo feature `cuda`).
    pub cuda_feature: bool,
}

/// Loads ONNX Runtime (as `environment` does) and reports what it is.
pub fn describe(dylib: Option<&Path>) -> Result<RuntimeInfo, EngineError> {
    environment(dylib)?;
    let (path, origin) = dylib_location(dylib);
    let version = version_of(&path, ort::info());
    let providers = providers::compiled_in();
    Ok(RuntimeInfo {
        path,
        origin,
        version,
        providers,
        cuda_feature: cfg!(feature = "cuda"),
    })
}

/// The version of the ONNX Runtime at `path` with build information `build` (ORT's
/// `GetBuildInfoString`: `git-branch=rel-1.22.0, git-commit-id=...`). Wheels built from a
/// detached HEAD carry no release branch; their file name (`libonnxruntime.so.1.22.0`) does.
fn version_of(path: &Path, build: &str) -> String {
    let field = |key: &str| {
        build
            .split(',')
            .find_map(|part| {
                part.trim()
                    .split_once('=')
                    .filter(|(k, _)| k.ends_with(key))
            })
            .map(|(_, v)| v.trim().to_string())
    };
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let from_name = real
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once(".so."))
        .map(|(_, v)| v.to_string());
    let version = field("git-branch")
        .and_then(|b| b.strip_prefix("rel-").map(str::to_string))
        .or(from_name)
        .unwrap_or_else(|| "unknown".to_string());
    match field("git-commit-id") {
        Some(commit) => format!("{version} (commit {commit})"),
        None => version,
    }
}

/// Asks ONNX Runtime which execution providers it was built with. `ort` exposes the question
/// per provider type (`ExecutionProvider::is_available`), and only for the providers whose
/// cargo features are on; a probe type per provider name asks it for the others.
mod providers {
    use ort::ep::ExecutionProvider;

    macro_rules! probes {
        ($($probe:ident => $name:literal),* $(,)?) => {
            $(
                struct $probe;
                impl ExecutionProvider for $probe {
                    const NAME: &'static str = $name;
                    fn register(
                        &self,
                        _: &mut ort::session::builder::SessionBuilder,
                    ) -> ort::Result<()> {
                        Err(ort::Error::new("a probe registers nothing"))
                    }
                }
            )*
            /// The providers among the known ones that this ONNX Runtime has.
            pub fn compiled_in() -> Vec<&'static str> {
                let mut out = Vec::new();
                $(
                    if matches!($probe::is_available(), Ok(true)) {
                        out.push($name);
                    }
                )*
                out
            }
        };
    }

    probes! {
        Cpu => "CPUExecutionProvider",
        Cuda => "CUDAExecutionProvider",
        TensorRt => "TensorrtExecutionProvider",
        Rocm => "ROCMExecutionProvider",
        MiGraphX => "MIGraphXExecutionProvider",
        OpenVino => "OpenVINOExecutionProvider",
        Dnnl => "DnnlExecutionProvider",
        XnnPack => "XnnpackExecutionProvider",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_release_branch_else_the_file_name() {
        let build =
            "ORT Build Info: git-branch=rel-1.22.0, git-commit-id=26250ae, build type=Release";
        assert_eq!(
            version_of(Path::new("/x/libonnxruntime.so"), build),
            "1.22.0 (commit 26250ae)"
        );
        let build = "ORT Build Info: git-branch=HEAD, git-commit-id=fab30a4, build type=Release";
        assert_eq!(
            version_of(Path::new("/nonexistent/libonnxruntime.so.1.32.0"), build),
            "1.32.0 (commit fab30a4)"
        );
        assert_eq!(version_of(Path::new("libonnxruntime.so"), ""), "unknown");
    }
}
