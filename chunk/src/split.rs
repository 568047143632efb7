//! The splitters: `CharacterTextSplitter` and `RecursiveCharacterTextSplitter` (with its
//! Markdown/LaTeX/Python presets) walking a text piece by piece and merging the pieces into
//! chunks. The kwargs are `kwargs`'s, the pieces `pieces`'s, the merge `merge`'s and the limits
//! on the answer `output`'s.

use crate::kwargs::{type_error, Keep, Kind, Settings};
use crate::merge::Merger;
use crate::output::{Halt, Output};
use crate::pieces::{self, Sep};
use crate::ChunkError;

/// Python's recursion limit is 1000 frames; a few are the caller's.
const MAX_DEPTH: usize = 990;

pub(crate) struct Splitter {
    kind: Kind,
    settings: Settings,
    separators: Vec<Sep>,
}

impl Splitter {
    /// `Class(**kwargs)`, with LangChain's checks in LangChain's order, for splitting a text
    /// of `text_len` bytes (which sizes the regex engine's backtracking limit).
    pub(crate) fn new(
        kind: Kind,
        kwargs: &serde_json::Value,
        text_len: usize,
    ) -> Result<Splitter, ChunkError> {
        let mut settings = Settings::parse(kind, kwargs)?;
        let separators = std::mem::take(&mut settings.separators)
            .into_iter()
            .map(|raw| Sep::new(raw, settings.is_regex, text_len))
            .collect();
        Ok(Splitter {
            kind,
            settings,
            separators,
        })
    }

    /// `split_text(text)`, each chunk to `out` as soon as it is complete.
    pub(crate) fn split_text(&self, text: &str, out: &mut Output) -> Result<(), Halt> {
        if self.kind == Kind::Character {
            return self.split_character(text, out);
        }
        self.split_recursive(text, &self.separators, 0, out)
    }

    fn merger<'s>(&self, separator: &'s str) -> Merger<'s> {
        let s = &self.settings;
        Merger::new(separator, s.chunk_size, s.chunk_overlap, s.strip_whitespace)
    }

    /// `CharacterTextSplitter.split_text`.
    fn split_character(&self, text: &str, out: &mut Output) -> Result<(), Halt> {
        let Some(sep) = self.separators.first() else {
            return Ok(());
        };
        let keep = self.settings.keep;
        pieces::check(text, sep, keep)?;
        let lookaround = self.settings.is_regex
            && ["(?=", "(?<!", "(?<=", "(?!"]
                .iter()
                .any(|p| sep.raw.starts_with(p));
        let merge_sep = if keep != Keep::No || lookaround {
            ""
        } else {
            sep.raw.as_str()
        };
        self.check_length_function()?;
        let mut merger = self.merger(merge_sep);
        pieces::for_each(text, sep, keep, |piece| {
            merger.push(&piece, piece.chars().count(), out)
        })?;
        merger.finish(out)
    }

    /// `RecursiveCharacterTextSplitter._split_text`: pieces shorter than `chunk_size` are
    /// merged, longer ones split again with the next separators (or, with none left, made
    /// chunks as they are).
    fn split_recursive(
        &self,
        text: &str,
        separators: &[Sep],
        depth: usize,
        out: &mut Output,
    ) -> Result<(), Halt> {
        if depth >= MAX_DEPTH {
            return Err(ChunkError::TooDeep.into());
        }
        let Some(mut chosen) = separators.len().checked_sub(1) else {
            return Ok(());
        };
        let mut rest: &[Sep] = &[];
        for (i, sep) in separators.iter().enumerate() {
            if sep.raw.is_empty() {
                chosen = i;
                break;
            }
            if sep.found_in(text)? {
                chosen = i;
                rest = separators.get(i + 1..).unwrap_or(&[]);
                break;
            }
        }
        let Some(sep) = separators.get(chosen) else {
            return Ok(());
        };
        let keep = self.settings.keep;
        pieces::check(text, sep, keep)?;
        let merge_sep = if keep != Keep::No {
            ""
        } else {
            sep.raw.as_str()
        };
        // The merger holds a run of short pieces; it is completed (and empty) before a long
        // piece is split further, so at most one level's run is held at a time.
        let mut merger = self.merger(merge_sep);
        let mut first = true;
        pieces::for_each(text, sep, keep, |piece| {
            if std::mem::take(&mut first) {
                self.check_length_function()?;
            }
            let len = piece.chars().count();
            if (len as f64) < self.settings.chunk_size {
                return merger.push(&piece, len, out);
            }
            merger.finish(out)?;
            if rest.is_empty() {
                out.emit(&piece)
            } else {
                self.split_recursive(&piece, rest, depth + 1, out)
            }
        })?;
        merger.finish(out)
    }

    fn check_length_function(&self) -> Result<(), ChunkError> {
        match self.settings.length_function {
            None => Ok(()),
            Some(t) => Err(type_error(format!("'{t}' object is not callable"))),
        }
    }
}
