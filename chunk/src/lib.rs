//! PostgresML's `pgml.chunk(splitter text, text text, kwargs jsonb DEFAULT '{}')
//! RETURNS TABLE (chunk_index bigint, chunk text)`, reimplemented in pure Rust.
//!
//! PostgresML (`pgml-extension/src/bindings/langchain/langchain.py`) builds one of LangChain's
//! text splitters (`langchain-text-splitters`) with `Class(**kwargs).split_text(text)`:
//!
//! | `splitter`                          | LangChain class                                |
//! |-------------------------------------|------------------------------------------------|
//! | `recursive_character` (the default) | `RecursiveCharacterTextSplitter`               |
//! | `character`                         | `CharacterTextSplitter`                        |
//! | `markdown`                          | `MarkdownTextSplitter`                         |
//! | `latex`                             | `LatexTextSplitter`                            |
//! | `python`                            | `PythonCodeTextSplitter`                       |
//! | `nltk`, `spacy`                     | not reproduced: [`ChunkError::UnsupportedSplitter`] |
//!
//! Anything else is `ValueError("Unknown splitter: …")` there and
//! [`ChunkError::UnknownSplitter`] here. [`chunk`] returns the chunks in order; PostgresML's
//! `chunk_index` is the 1-based position (`enumerate(..) + 1`).
//!
//! `kwargs` are the splitter's constructor arguments: `chunk_size` (default 4000),
//! `chunk_overlap` (200), `keep_separator` (`true`, i.e. `"start"`, for the recursive family;
//! `false` for `character`; `"end"` attaches the separator to the piece before it),
//! `strip_whitespace` (`true`), `add_start_index` (no effect on the chunks), `separator`
//! (`character`, default `"\n\n"`), `separators` (`recursive_character`, default
//! `["\n\n", "\n", " ", ""]`), `is_separator_regex` (`false`: separators are literal text).
//! Lengths are Python's `len`: Unicode code points. Keys a class does not take are a
//! `TypeError` there and [`ChunkError::UnknownKwarg`] here (`separators` included, for the
//! `markdown`/`latex`/`python` splitters, which fix their own); `length_function` (a Python
//! callable, impossible in JSON) fails as a call of a non-callable would.
//!
//! With `is_separator_regex`, separators follow Python `re` syntax and `re.split` semantics
//! (capturing groups land in the output as they do in Python; look-around separators are not
//! re-inserted by `character`), run by `fancy-regex` with Python's spellings translated
//! (`$` before a final newline, `\s`/`\w` as `str.isspace`/`str.isalnum`, literal `{`, ...).
//! Known gaps: `\b` uses the `regex` crate's word characters (which include combining marks),
//! and where a pattern prefers an empty match to a non-empty one at the place right after an
//! empty match, Python takes the non-empty one and this crate looks one character further.

mod pyre;
mod split;

use serde_json::Value;

/// Why [`chunk`] gave no chunks. The messages follow the Python exceptions PostgresML
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
    /// The chunks would exceed the output limit ([`MAX_OUTPUT_BYTES`]; overlap can make them
    /// many times the text) (SQLSTATE 54000; Python would build them all).
    #[error("the chunks exceed {MAX_OUTPUT_BYTES} bytes in all (lower chunk_overlap, or chunk a shorter text)")]
    OutputTooLarge,
}

/// The most bytes of chunks one [`chunk`] call returns: 64 MiB, the engine's bound on the
/// texts of one embedding call.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

impl ChunkError {
    /// The SQLSTATE to report: 22023 (invalid_parameter_value) for a bad splitter name or
    /// kwargs, 0A000 (feature_not_supported) for `nltk`/`spacy`, 2201B
    /// (invalid_regular_expression), 54001 (statement_too_complex) for [`Self::TooDeep`] and
    /// [`Self::RegexTooComplex`].
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ChunkError::UnknownSplitter(_)
            | ChunkError::UnknownKwarg { .. }
            | ChunkError::BadKwarg { .. } => "22023",
            ChunkError::UnsupportedSplitter(_) => "0A000",
            ChunkError::InvalidRegex { .. } => "2201B",
            ChunkError::TooDeep | ChunkError::RegexTooComplex { .. } => "54001",
            ChunkError::OutputTooLarge => "54000",
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
            | ChunkError::OutputTooLarge => None,
        }
    }
}

/// Splits `text` as PostgresML's `pgml.chunk(splitter, text, kwargs)` does; the chunk at
/// position `i` is the row with `chunk_index = i + 1`. Never panics; the work is linear in
/// the text per separator tried, plus the size of the output (which chunk overlap makes up to
/// `chunk_size / (chunk_size - chunk_overlap)` times the text); an output over
/// [`MAX_OUTPUT_BYTES`] is [`ChunkError::OutputTooLarge`], found before it is all built.
pub fn chunk(splitter: &str, text: &str, kwargs: &Value) -> Result<Vec<String>, ChunkError> {
    let kind = match splitter {
        "recursive_character" => split::Kind::Recursive,
        "character" => split::Kind::Character,
        "markdown" => split::Kind::Markdown,
        "latex" => split::Kind::Latex,
        "python" => split::Kind::Python,
        "nltk" | "spacy" => return Err(ChunkError::UnsupportedSplitter(splitter.to_owned())),
        _ => return Err(ChunkError::UnknownSplitter(splitter.to_owned())),
    };
    split::Splitter::new(kind, kwargs, text.len())?
        .limit_output(MAX_OUTPUT_BYTES)
        .split_text(text)
}
