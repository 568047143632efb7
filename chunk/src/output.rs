//! The answer of one call: each chunk is counted against the limits as it is made and handed
//! to the caller's sink at once, so no limit is checked after the fact on a built answer. How
//! chunks are made is `split`'s and `merge`'s business.

use std::ops::ControlFlow;

use crate::ChunkError;

/// The most bytes of text one call splits: 16 MiB. Postgres itself would pass up to 1 GB, but
/// at LangChain's defaults (4000/200) the chunks of 16 MiB are already ~17 MiB, a generous
/// overlap (half the chunk size) doubles that, and [`MAX_OUTPUT_BYTES`] must still hold; and
/// the proxy holds a call's text a few times over (the upcall NOTICE, its decoded request).
/// 16 MiB is ~3,000 pages of prose (War and Peace is 3.2 MB): no document one embeds chunk by
/// chunk comes near it.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// The most chunks one call returns: 1,048,576. Each is a row for Postgres to store and return
/// (the upcall writes one row per chunk), whatever its size: one-character chunks of a text
/// within [`MAX_INPUT_BYTES`] would otherwise be 16 million rows.
pub const MAX_CHUNKS: usize = 1 << 20;

/// The most memory one call's chunks may take, counted as their bytes plus
/// [`CHUNK_OVERHEAD`] each: 64 MiB, the engine's bound on the texts of one embedding call.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

/// What one chunk costs besides its bytes when kept as a `String` in a `Vec`: the 24-byte
/// `String` and its allocation's header and rounding (glibc: 8 to 24 bytes, 32 at least).
/// Counting only the bytes let one-character chunks take ~56 times the text.
pub const CHUNK_OVERHEAD: usize = 48;

/// Why a split stopped before its end.
#[derive(Debug)]
pub(crate) enum Halt {
    /// The call fails with this error.
    Failed(ChunkError),
    /// The sink asked for no more chunks: not an error.
    Stopped,
}

impl From<ChunkError> for Halt {
    fn from(e: ChunkError) -> Self {
        Halt::Failed(e)
    }
}

/// Counts the chunks against the limits and hands them to the sink, in order.
pub(crate) struct Output<'s> {
    sink: &'s mut dyn FnMut(&str) -> ControlFlow<()>,
    chunks: usize,
    bytes: usize,
    max_chunks: usize,
    max_bytes: usize,
}

impl<'s> Output<'s> {
    /// At most [`MAX_CHUNKS`] chunks and [`MAX_OUTPUT_BYTES`] (with overhead) to `sink`.
    pub(crate) fn new(sink: &'s mut dyn FnMut(&str) -> ControlFlow<()>) -> Self {
        Output {
            sink,
            chunks: 0,
            bytes: 0,
            max_chunks: MAX_CHUNKS,
            max_bytes: MAX_OUTPUT_BYTES,
        }
    }

    /// One more chunk of the answer; fails once it would pass a limit.
    pub(crate) fn emit(&mut self, chunk: &str) -> Result<(), Halt> {
        if self.chunks >= self.max_chunks {
            return Err(ChunkError::TooManyChunks.into());
        }
        let cost = chunk.len().saturating_add(CHUNK_OVERHEAD);
        if cost > self.max_bytes - self.bytes {
            return Err(ChunkError::OutputTooLarge.into());
        }
        self.chunks += 1;
        self.bytes += cost;
        match (self.sink)(chunk) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Halt::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_past_a_limit_fails_and_is_not_handed_on() {
        let mut got = Vec::new();
        let mut sink = |c: &str| {
            got.push(c.to_owned());
            ControlFlow::Continue(())
        };
        let mut out = Output::new(&mut sink);
        out.max_chunks = 2;
        assert!(out.emit("a").is_ok() && out.emit("b").is_ok());
        assert!(matches!(
            out.emit("c"),
            Err(Halt::Failed(ChunkError::TooManyChunks))
        ));
        let mut out = Output::new(&mut sink);
        out.max_bytes = 2 * CHUNK_OVERHEAD + 3;
        assert!(out.emit("d").is_ok() && out.emit("ef").is_ok());
        assert!(matches!(
            out.emit(""),
            Err(Halt::Failed(ChunkError::OutputTooLarge))
        ));
        assert_eq!(got, ["a", "b", "d", "ef"]);
    }

    #[test]
    fn a_sink_that_breaks_stops_the_split() {
        let mut sink = |_: &str| ControlFlow::Break(());
        let mut out = Output::new(&mut sink);
        assert!(matches!(out.emit("a"), Err(Halt::Stopped)));
    }
}
