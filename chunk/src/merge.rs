//! LangChain's `_merge_splits`, as a stream: pieces go in one at a time and each chunk goes
//! out as soon as it is complete. Only the chunk being built is kept (its text, and the length
//! of each of its pieces); which pieces to merge is `split`'s business.

use std::collections::VecDeque;

use crate::output::{Halt, Output};
use crate::ChunkError;

/// Greedy chunks of at most `chunk_size` code points (a single longer piece becomes its own
/// chunk), each new chunk starting with the tail of the previous one that fits in
/// `chunk_overlap`; pieces joined by `separator`, chunks stripped of whitespace if asked.
pub(crate) struct Merger<'a> {
    separator: &'a str,
    sep_len: i64,
    chunk_size: f64,
    chunk_overlap: f64,
    strip_whitespace: bool,
    /// The pieces of the current chunk joined by the separator, from byte `start` on (what
    /// is before it has been dropped from the chunk, and is removed in bulk now and then).
    joined: String,
    start: usize,
    /// The lengths in code points of the current chunk's pieces, oldest first, as runs of
    /// equal lengths: the pieces of a text can be one per code point, and a list of them took
    /// thirty-two bytes each; a run takes eight, and a repetitive text is a few runs.
    runs: VecDeque<Run>,
    /// How many pieces the runs hold.
    pieces: usize,
    /// The current chunk's length in code points, separators included.
    total: i64,
}

impl<'a> Merger<'a> {
    pub(crate) fn new(
        separator: &'a str,
        chunk_size: f64,
        chunk_overlap: f64,
        strip_whitespace: bool,
    ) -> Self {
        Merger {
            separator,
            sep_len: separator.chars().count() as i64,
            chunk_size,
            chunk_overlap,
            strip_whitespace,
            joined: String::new(),
            start: 0,
            runs: VecDeque::new(),
            pieces: 0,
            total: 0,
        }
    }

    fn too_big(&self, n: i64) -> bool {
        n as f64 > self.chunk_size
    }

    /// The separator's length if the current chunk has pieces (`separator_len if current_doc`).
    fn joiner(&self) -> i64 {
        if self.pieces == 0 {
            0
        } else {
            self.sep_len
        }
    }

    /// Adds `piece` (`len` code points), first completing the current chunk if it would not
    /// fit.
    pub(crate) fn push(&mut self, piece: &str, len: usize, out: &mut Output) -> Result<(), Halt> {
        // The input bound (16 MiB) keeps every length far below u32::MAX.
        let short =
            u32::try_from(len).map_err(|_| ChunkError::TextTooLong { bytes: piece.len() })?;
        let len = i64::from(short);
        if self.too_big(self.total + len + self.joiner()) && self.pieces > 0 {
            self.emit(out)?;
            while self.pieces > 0
                && (self.total as f64 > self.chunk_overlap
                    || (self.too_big(self.total + len + self.joiner()) && self.total > 0))
            {
                self.drop_first();
            }
        }
        if self.pieces > 0 {
            self.joined.push_str(self.separator);
        }
        self.joined.push_str(piece);
        self.pieces += 1;
        match self.runs.back_mut() {
            Some(run) if run.len == short && run.count < u32::MAX => run.count += 1,
            _ => self.runs.push_back(Run {
                len: short,
                count: 1,
            }),
        }
        self.total += len + if self.pieces > 1 { self.sep_len } else { 0 };
        Ok(())
    }

    /// Completes the last chunk; the merger is then empty (and reusable).
    pub(crate) fn finish(&mut self, out: &mut Output) -> Result<(), Halt> {
        if self.pieces > 0 {
            self.emit(out)?;
        }
        self.runs.clear();
        self.pieces = 0;
        self.total = 0;
        self.start = 0;
        // Keep a small buffer for the next run of pieces; give a large one back.
        if self.joined.capacity() > 64 * 1024 {
            self.joined = String::new();
            self.runs = VecDeque::new();
        } else {
            self.joined.clear();
        }
        Ok(())
    }

    /// `_join_docs` of the current chunk: nothing for a chunk that is empty after stripping.
    fn emit(&self, out: &mut Output) -> Result<(), Halt> {
        let text = self.joined.get(self.start..).unwrap_or_default();
        let text = if self.strip_whitespace {
            text.trim_matches(is_py_space)
        } else {
            text
        };
        if text.is_empty() {
            return Ok(());
        }
        out.emit(text)
    }

    /// Drops the oldest piece of the current chunk (and the separator after it).
    fn drop_first(&mut self) {
        let Some(run) = self.runs.front_mut() else {
            return;
        };
        let first = run.len;
        run.count -= 1;
        if run.count == 0 {
            self.runs.pop_front();
        }
        self.pieces -= 1;
        let rest = self.joined.get(self.start..).unwrap_or_default();
        let mut bytes = rest
            .char_indices()
            .nth(first as usize)
            .map_or(rest.len(), |(i, _)| i);
        self.total -= i64::from(first);
        if self.pieces > 0 {
            bytes += self.separator.len();
            self.total -= self.sep_len;
        }
        self.start = (self.start + bytes).min(self.joined.len());
        // Remove the dropped text once it is most of the buffer: linear work in all.
        if self.start > 4096 && self.start * 2 > self.joined.len() {
            self.joined.drain(..self.start);
            self.start = 0;
        }
    }
}

/// `count` pieces in a row of `len` code points each.
struct Run {
    len: u32,
    count: u32,
}

/// `str.isspace`: Unicode White_Space plus the ASCII information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
