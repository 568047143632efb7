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
//! Limits PostgresML does not have (each [`ChunkError`] with SQLSTATE 54000,
//! program_limit_exceeded): the text of one call ([`MAX_INPUT_BYTES`]), its chunks' count
//! ([`MAX_CHUNKS`]) and their memory ([`MAX_OUTPUT_BYTES`], [`CHUNK_OVERHEAD`] a chunk counted
//! besides its text). [`chunk_each`] hands the chunks on as they are made, so a caller that
//! writes them out never holds the whole answer.
//!
//! Known gaps: `\b` uses the `regex` crate's word characters (which include combining marks),
//! and where a pattern prefers an empty match to a non-empty one at the place right after an
//! empty match, Python takes the non-empty one and this crate looks one character further.

mod error;
mod kwargs;
mod merge;
mod output;
mod pieces;
mod pyre;
mod split;

use std::ops::ControlFlow;

use serde_json::Value;

pub use error::ChunkError;
pub use output::{CHUNK_OVERHEAD, MAX_CHUNKS, MAX_INPUT_BYTES, MAX_OUTPUT_BYTES};

/// Splits `text` as PostgresML's `pgml.chunk(splitter, text, kwargs)` does; the chunk at
/// position `i` is the row with `chunk_index = i + 1`. See [`chunk_each`] for the limits.
pub fn chunk(splitter: &str, text: &str, kwargs: &Value) -> Result<Vec<String>, ChunkError> {
    let mut chunks = Vec::new();
    chunk_each(splitter, text, kwargs, |c| {
        chunks.push(c.to_owned());
        ControlFlow::Continue(())
    })?;
    Ok(chunks)
}

/// [`chunk`], handing each chunk to `each` in order as soon as it is made; `each` returning
/// `Break` ends the split early (with `Ok`). Never panics. A text over [`MAX_INPUT_BYTES`] is
/// refused before any work; the chunks are counted as they are made, and the one that would
/// pass [`MAX_CHUNKS`] or [`MAX_OUTPUT_BYTES`] fails the call instead of reaching `each`
/// (chunks handed on before it are then not the answer). Memory besides the chunks stays
/// proportional to the text: no list of its pieces is built. The work is linear in the text
/// per separator tried, plus the size of the output (which chunk overlap makes up to
/// `chunk_size / (chunk_size - chunk_overlap)` times the text).
pub fn chunk_each(
    splitter: &str,
    text: &str,
    kwargs: &Value,
    mut each: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<(), ChunkError> {
    let kind = match splitter {
        "recursive_character" => kwargs::Kind::Recursive,
        "character" => kwargs::Kind::Character,
        "markdown" => kwargs::Kind::Markdown,
        "latex" => kwargs::Kind::Latex,
        "python" => kwargs::Kind::Python,
        "nltk" | "spacy" => return Err(ChunkError::UnsupportedSplitter(splitter.to_owned())),
        _ => return Err(ChunkError::UnknownSplitter(splitter.to_owned())),
    };
    if text.len() > MAX_INPUT_BYTES {
        return Err(ChunkError::TextTooLong { bytes: text.len() });
    }
    let splitter = split::Splitter::new(kind, kwargs, text.len())?;
    match splitter.split_text(text, &mut output::Output::new(&mut each)) {
        Ok(()) | Err(output::Halt::Stopped) => Ok(()),
        Err(output::Halt::Failed(e)) => Err(e),
    }
}
