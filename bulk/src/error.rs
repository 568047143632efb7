//! The crate's one error type, with each variant mapped to a SQLSTATE in one place
//! (`BulkError::sqlstate`), so the proxy can answer with a proper ErrorResponse.

use std::path::PathBuf;

/// Everything that can go wrong while loading a dataset or running a backfill.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The dataset could not be found (offline and not cached, or a missing path).
    #[error("{0}")]
    DatasetNotFound(String),
    /// A bad argument: unknown kwargs key, bad option value, incompatible column.
    #[error("{0}")]
    InvalidArgument(String),
    /// A client-named path outside the directories the operator allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// A dataset beyond a documented limit (files, nesting).
    #[error("{0}")]
    LimitExceeded(String),
    /// The dataset files exist but cannot be read or do not match the schema.
    #[error("dataset file {path}: {message}")]
    DatasetFile {
        /// The file being read.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Downloading from the Hugging Face Hub failed.
    #[error("downloading dataset {dataset}: {message}")]
    Download {
        /// The dataset id.
        dataset: String,
        /// What the hub client reported.
        message: String,
    },
    /// The embedding engine failed.
    #[error("embedding engine: {0}")]
    Engine(#[from] pgml_engine::EngineError),
    /// The database rejected a statement or the connection failed.
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// An internal invariant failed (e.g. the engine returned the wrong number of vectors).
    #[error("internal error: {0}")]
    Internal(String),
    /// The operation was cancelled (e.g. Ctrl-C during a backfill).
    #[error("cancelled")]
    Cancelled,
}

impl BulkError {
    /// The SQLSTATE a client should see for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            BulkError::DatasetNotFound(_) => "58P01",
            BulkError::InvalidArgument(_) => "22023",
            BulkError::PermissionDenied(_) => "42501",
            BulkError::LimitExceeded(_) => "54000",
            BulkError::DatasetFile { .. } => "22000",
            BulkError::Io { .. } => "58030",
            BulkError::Download { .. } => "58000",
            BulkError::Engine(_) => "XX000",
            BulkError::Database(e) => e.code().map(|c| c.code()).unwrap_or("08006"),
            BulkError::Internal(_) => "XX000",
            BulkError::Cancelled => "57014",
        }
    }

    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        BulkError::DatasetFile {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        BulkError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
