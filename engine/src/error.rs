//! The engine's one error type and its mapping to Postgres SQLSTATEs.
//! Every failure a caller can see goes through `EngineError`; `sqlstate` is the only place
//! that decides which SQLSTATE a failure becomes.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while turning (model, texts, kwargs) into vectors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A kwargs key that pgml.embed does not accept for this model.
    #[error("kwargs key \"{key}\" is not supported{hint}")]
    UnknownKwarg { key: String, hint: String },
    /// A kwargs key with a value of the wrong type or out of range.
    #[error("kwargs key \"{key}\": {reason}")]
    BadKwarg { key: String, reason: String },
    /// kwargs was not a JSON object.
    #[error("kwargs must be a JSON object, got {0}")]
    KwargsNotObject(String),
    /// A model directory the operator allowed lacks the model's files.
    #[error("model \"{model}\" not found: {reason}")]
    ModelNotFound { model: String, reason: String },
    /// The model is not in the hub cache, and could not be downloaded (`downloads` says why).
    #[error(
        "model \"{model}\" (revision {revision}) not found in the Hugging Face cache at {}: \
         {missing}; {downloads}. To get it: huggingface-cli download {model}{revision_flag} \
         --cache-dir {} (the engine reads tokenizer.json, the sentence-transformers configs \
         and ONNX weights: one of {})",
        .hub_dir.display(),
        .hub_dir.display(),
        crate::resolve::ONNX_CANDIDATES.join(", "),
        revision_flag = if revision == "main" { String::new() } else { format!(" --revision {revision}") },
    )]
    ModelNotCached {
        model: String,
        revision: String,
        /// What the cache lacks (no folder for the model, no tokenizer.json, ...).
        missing: String,
        hub_dir: PathBuf,
        /// Whether downloads were off (and why) or failed.
        downloads: String,
    },
    /// A model id, file name or revision that is not a well-formed name.
    #[error("{what} {reason}")]
    InvalidName { what: &'static str, reason: String },
    /// A client-named path outside the directories the operator allowed.
    #[error("{0}")]
    NotAllowed(String),
    /// Client input beyond a documented limit (text size, texts per call).
    #[error("{0}")]
    TooLarge(String),
    /// Every pgml.transform_stream stream the proxy allows is open.
    #[error("pgml.transform_stream: {limit} streams are open already (the most at once); retry when one ends")]
    TooManyStreams { limit: usize },
    /// A model file exists but could not be loaded (corrupt ONNX, bad tokenizer.json, ...).
    #[error("model \"{model}\": cannot load {path}: {reason}")]
    ModelLoad {
        model: String,
        path: PathBuf,
        reason: String,
    },
    /// The model exists but is of the other kind: a cross-encoder given to pgml.embed, or an
    /// embedding model (or a classifier with several labels) given to pgml.rank.
    #[error("model \"{model}\" {reason}")]
    WrongModelKind { model: String, reason: String },
    /// An int8 model the fidelity guard refuses: no int8 file, no fidelity record, or a
    /// recorded minimum cosine against fp32 below the operator's floor.
    #[error(
        "model \"{model}\" cannot run in int8: {reason}; use {{\"precision\": \"fp32\"}}, or an \
         operator can let refused int8 models run in fp32 (pgml-proxy --int8-fallback)"
    )]
    PrecisionRefused { model: String, reason: String },
    /// ONNX Runtime itself could not be loaded or initialised.
    #[error("ONNX Runtime unavailable: {0}")]
    Runtime(String),
    /// Tokenization or inference failed on a batch.
    #[error("inference failed for model \"{model}\": {reason}")]
    Inference { model: String, reason: String },
    /// The request was abandoned before it completed (engine shut down or caller gone).
    #[error("embedding request cancelled")]
    Cancelled,
    /// Reading input or writing output of the JSON-lines interface failed.
    #[error("line {line}: {reason}")]
    JsonLines { line: usize, reason: String },
    /// A remote backend specification (`--remote-model`) that cannot be used.
    #[error("remote backend \"{spec}\": {reason}")]
    RemoteConfig { spec: String, reason: String },
    /// The remote embedding backend could not be reached, retries included.
    #[error("remote embedding backend {url} unreachable after {attempts} attempt(s): {reason}")]
    RemoteUnreachable {
        url: String,
        attempts: u32,
        reason: String,
    },
    /// The remote embedding backend did not answer within the per-request timeout.
    #[error("remote embedding backend {url} did not answer within {timeout:?}")]
    RemoteTimeout { url: String, timeout: Duration },
    /// The remote embedding backend answered with an error status or an unusable body.
    #[error("remote embedding backend {url}: {reason}")]
    RemoteResponse { url: String, reason: String },
    /// pgml.transform names a model no `--remote-model` route serves (None: it names none
    /// and there is no default route).
    #[error("{}", no_route_message(.model.as_deref()))]
    NoGenerateRoute { model: Option<String> },
    /// pgml.transform args or inputs that cannot become an OpenAI request.
    #[error("pgml.transform: {0}")]
    BadGenerateRequest(String),
    /// The model server answered an HTTP error status (after retries for 429 and 5xx).
    #[error("remote model server at {url} answered HTTP {status}: {message}")]
    GenerateStatus {
        url: String,
        status: u16,
        message: String,
    },
    /// The model server could not be reached, retries included.
    #[error("remote model server at {url} unreachable after {attempts} attempt(s): {reason}")]
    GenerateUnreachable {
        url: String,
        attempts: u32,
        reason: String,
    },
    /// The model server sent nothing for the timeout (the answer, or a stream's next chunk).
    #[error("remote model server at {url} sent nothing for {timeout:?}")]
    GenerateTimeout { url: String, timeout: Duration },
    /// The model server's answer is unusable: not the OpenAI shape, too large, or a stream
    /// that ended before `data: [DONE]` or a finish_reason.
    #[error("remote model server at {url}: {reason}")]
    GenerateResponse { url: String, reason: String },
    /// I/O failure of the JSON-lines interface.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// The SQLSTATE the proxy reports for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            EngineError::UnknownKwarg { .. }
            | EngineError::BadKwarg { .. }
            | EngineError::KwargsNotObject(_)
            | EngineError::RemoteConfig { .. }
            | EngineError::InvalidName { .. }
            | EngineError::PrecisionRefused { .. }
            | EngineError::BadGenerateRequest(_) => "22023",
            // undefined_object: no route is configured under that model name.
            EngineError::NoGenerateRoute { .. } => "42704",
            // The server refused the request (4xx: our args or its limits) or failed (5xx).
            EngineError::GenerateStatus { status, .. } if *status < 500 => "22023",
            EngineError::GenerateStatus { .. }
            | EngineError::GenerateUnreachable { .. }
            | EngineError::GenerateResponse { .. } => "58000",
            // query_canceled, as Postgres reports its own statement_timeout.
            EngineError::GenerateTimeout { .. } => "57014",
            EngineError::NotAllowed(_) => "42501",
            // wrong_object_type: the named model is not the kind the function takes.
            EngineError::WrongModelKind { .. } => "42809",
            EngineError::TooLarge(_) => "54000",
            // too_many_connections: each stream holds a connection to its server.
            EngineError::TooManyStreams { .. } => "53300",
            EngineError::ModelNotFound { .. }
            | EngineError::ModelNotCached { .. }
            | EngineError::ModelLoad { .. } => "58000",
            EngineError::Runtime(_)
            | EngineError::Inference { .. }
            | EngineError::Io(_)
            | EngineError::RemoteResponse { .. } => "XX000",
            // sqlclient_unable_to_establish_sqlconnection / connection_failure: the backend
            // is a server we connect to, as Postgres reports for its own foreign servers.
            EngineError::RemoteUnreachable { .. } => "08001",
            EngineError::RemoteTimeout { .. } => "08006",
            EngineError::JsonLines { .. } => "22P02",
            EngineError::Cancelled => "57014",
        }
    }

    pub(crate) fn bad_args(reason: impl Into<String>) -> Self {
        EngineError::BadGenerateRequest(reason.into())
    }

    pub(crate) fn bad(key: &str, reason: impl Into<String>) -> Self {
        EngineError::BadKwarg {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

fn no_route_message(model: Option<&str>) -> String {
    const SERVERS: &str = "(any OpenAI-compatible server: vLLM, llama.cpp, Ollama, TGI, OpenAI)";
    match model {
        Some(m) => format!(
            "model \"{m}\" has no route for pgml.transform: start pgml-proxy with \
             --remote-model '{m}=http://HOST:PORT/v1' {SERVERS}"
        ),
        None => format!(
            "pgml.transform names no model (task's \"model\" or args' \"model\") and no route \
             serves a call without one: name the model, or start pgml-proxy with \
             --remote-model '*=http://HOST:PORT/v1' {SERVERS}"
        ),
    }
}
