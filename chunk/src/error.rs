//! The one error type of the crate, each variant with its SQLSTATE and the Python exception
//! PostgresML raises for the same input.

use crate::output::{CHUNK_OVERHEAD, MAX_CHUNKS, MAX_INPUT_BYTES, MAX_OUTPUT_BYTES};

/// Why [`chunk`](crate::chunk) gave no chunks. The messages follow the Python exceptions PostgresML
/// raises for the same input; [`ChunkError::sqlstate`] is the SQLSTATE to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Not one of PostgresML's splitter names (SQLSTATE 22023; a `ValueError` there).
    #[error("Unknown splitter: {0}")]
    UnknownSplitter(String),
    /// `nltk` or `spacy`: needs a Python NLP model, not reproduced (SQLSTATE 0A000).
    #[error(
        "splitter \"{0}\" is not supported (it needs a Python NLP package); supported \
         splitters: recursive_character, character, markdown, latex, python"
    )]
    UnsupportedSplitter(String),
    /// A kwarg the splitter's class does not accept (SQLSTATE 22023; a `TypeError` there).
    #[error("{message}")]
    UnknownKwarg {
        /// The offending key.
        name: String,
        /// Python's wording.
        message: String,
    },
    /// A kwarg of the wrong type or value, e.g. `chunk_overlap` > `chunk_size` (SQLSTATE
    /// 22023; the Python exception class is [`ChunkError::python_exception`]).
    #[error("{message}")]
    BadKwarg {
        /// `ValueError`, `TypeError` or `IndexError`: what LangChain raises.
        python: &'static str,
        /// Python's wording.
        message: String,
    },
    /// A separator regex (`is_separator_regex`) that does not compile (SQLSTATE 2201B; a
    /// `re.error` there).
    #[error("invalid separator regex {pattern:?}: {reason}")]
    InvalidRegex {
        /// The separator as given.
        pattern: String,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// A separator regex whose search hit the backtracking limit (a catastrophic pattern,
    /// which Python would run for as long as it takes) (SQLSTATE 54001).
    #[error("separator regex {pattern:?} is too complex for this text: {reason}")]
    RegexTooComplex {
        /// The separator as given.
        pattern: String,
        /// The regex engine's explanation.
        reason: String,
    },
    /// The recursive splitter went deeper than Python's recursion limit (about one level per
    /// separator) (SQLSTATE 54001; a `RecursionError` there).
    #[error("maximum recursion depth exceeded")]
    TooDeep,
    /// The text is over [`MAX_INPUT_BYTES`] (SQLSTATE 54000; Python would split it).
    #[error(
        "pgml.chunk text of {bytes} bytes is over the limit of {MAX_INPUT_BYTES} bytes \
         (split the text into parts before chunking them)"
    )]
    TextTooLong {
        /// The text's size.
        bytes: usize,
    },
    /// The chunks would be more than [`MAX_CHUNKS`] (SQLSTATE 54000; Python would make them
    /// all).
    #[error(
        "pgml.chunk would make more than {MAX_CHUNKS} chunks (raise chunk_size, or chunk a \
         shorter text)"
    )]
    TooManyChunks,
    /// The chunks would take more than [`MAX_OUTPUT_BYTES`], counting [`CHUNK_OVERHEAD`] bytes
    /// a chunk (overlap can make them many times the text) (SQLSTATE 54000; Python would build
    /// them all).
    #[error(
        "the chunks exceed {MAX_OUTPUT_BYTES} bytes in all, counting {CHUNK_OVERHEAD} bytes a \
         chunk besides its text (lower chunk_overlap, raise chunk_size, or chunk a shorter text)"
    )]
    OutputTooLarge,
}

impl ChunkError {
    /// The SQLSTATE to report: 22023 (invalid_parameter_value) for a bad splitter name or
    /// kwargs, 0A000 (feature_not_supported) for `nltk`/`spacy`, 2201B
    /// (invalid_regular_expression), 54001 (statement_too_complex) for [`Self::TooDeep`] and
    /// [`Self::RegexTooComplex`], 54000 (program_limit_exceeded) for the limits on a call's text
    /// and chunks.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ChunkError::UnknownSplitter(_)
            | ChunkError::UnknownKwarg { .. }
            | ChunkError::BadKwarg { .. } => "22023",
            ChunkError::UnsupportedSplitter(_) => "0A000",
            ChunkError::InvalidRegex { .. } => "2201B",
            ChunkError::TooDeep | ChunkError::RegexTooComplex { .. } => "54001",
            ChunkError::TextTooLong { .. }
            | ChunkError::TooManyChunks
            | ChunkError::OutputTooLarge => "54000",
        }
    }

    /// The Python exception class PostgresML's LangChain call raises for the same input
    /// (`error` is `re.error`); `None` where Python would give chunks (`nltk`/`spacy`, a
    /// catastrophic regex).
    pub fn python_exception(&self) -> Option<&'static str> {
        match self {
            ChunkError::UnknownSplitter(_) => Some("ValueError"),
            ChunkError::UnknownKwarg { .. } => Some("TypeError"),
            ChunkError::BadKwarg { python, .. } => Some(python),
            ChunkError::InvalidRegex { .. } => Some("error"),
            ChunkError::TooDeep => Some("RecursionError"),
            ChunkError::UnsupportedSplitter(_)
            | ChunkError::RegexTooComplex { .. }
            | ChunkError::TextTooLong { .. }
            | ChunkError::TooManyChunks
            | ChunkError::OutputTooLarge => None,
        }
    }
}
