//! The limits on one call, each a 54000 (program_limit_exceeded) error found as the chunks are
//! made: the text's size, the chunks' count, and their memory with each chunk's overhead; and
//! `chunk_each`, which hands the chunks on as they are made.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::ops::ControlFlow;

use pgml_chunk::{
    chunk, chunk_each, ChunkError, CHUNK_OVERHEAD, MAX_CHUNKS, MAX_INPUT_BYTES, MAX_OUTPUT_BYTES,
};
use serde_json::json;

#[test]
fn a_text_over_the_input_limit_is_refused_before_any_work() {
    let text = "a".repeat(MAX_INPUT_BYTES + 1);
    let mut handed_on = 0;
    let err = chunk_each("recursive_character", &text, &json!({}), |_| {
        handed_on += 1;
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert_eq!(
        err,
        ChunkError::TextTooLong {
            bytes: MAX_INPUT_BYTES + 1
        }
    );
    assert_eq!(handed_on, 0);
    assert_eq!(err.sqlstate(), "54000");
    assert_eq!(err.python_exception(), None);
    assert!(
        err.to_string().contains(&MAX_INPUT_BYTES.to_string()),
        "{err}"
    );
    // At the limit the text is split (about 4,400 chunks at the defaults).
    let chunks = chunk("recursive_character", &text[1..], &json!({})).unwrap();
    assert!(chunks.len() > 4000, "{}", chunks.len());
}

#[test]
fn more_chunks_than_the_limit_are_refused() {
    let kwargs = json!({"chunk_size": 1, "chunk_overlap": 0});
    let err = chunk("recursive_character", &"a".repeat(MAX_CHUNKS + 1), &kwargs).unwrap_err();
    assert_eq!(err, ChunkError::TooManyChunks);
    assert_eq!(err.sqlstate(), "54000");
    assert!(err.to_string().contains(&MAX_CHUNKS.to_string()), "{err}");
    // Five million one-character chunks stop at the limit, having handed on no more.
    let mut handed_on = 0usize;
    let err = chunk_each("recursive_character", &"a".repeat(5 << 20), &kwargs, |_| {
        handed_on += 1;
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert_eq!(err, ChunkError::TooManyChunks);
    assert_eq!(handed_on, MAX_CHUNKS);
    // Exactly the limit is fine.
    let chunks = chunk("recursive_character", &"a".repeat(MAX_CHUNKS), &kwargs).unwrap();
    assert_eq!(chunks.len(), MAX_CHUNKS);
}

#[test]
fn each_chunks_overhead_counts_against_the_memory_limit() {
    // ~900,000 chunks of 40 bytes: 36 MB of text, under MAX_OUTPUT_BYTES, but 79 MB with
    // CHUNK_OVERHEAD each (what they take as Strings), over it; and fewer than MAX_CHUNKS.
    let text = "a".repeat(900_000);
    let kwargs = json!({"separator": "", "chunk_size": 40, "chunk_overlap": 39});
    let chunks_bytes = (text.len() - 39) * 40;
    assert!(chunks_bytes < MAX_OUTPUT_BYTES);
    assert!((text.len() - 39) * (40 + CHUNK_OVERHEAD) > MAX_OUTPUT_BYTES);
    assert!(text.len() < MAX_CHUNKS);
    let err = chunk("character", &text, &kwargs).unwrap_err();
    assert_eq!(err, ChunkError::OutputTooLarge);
    assert_eq!(err.sqlstate(), "54000");
    assert!(
        err.to_string().contains(&MAX_OUTPUT_BYTES.to_string()),
        "{err}"
    );
    // A tenth of it is within the limit.
    let chunks = chunk("character", &text[..90_000], &kwargs).unwrap();
    assert_eq!(chunks.len(), 90_000 - 39);
}

#[test]
fn chunk_each_hands_on_the_chunks_in_order_and_stops_when_asked() {
    let text = "one two three four five six seven eight nine ten eleven twelve";
    let kwargs = json!({"chunk_size": 10, "chunk_overlap": 4});
    let all = chunk("recursive_character", text, &kwargs).unwrap();
    assert!(all.len() > 4, "{all:?}");
    let mut streamed = Vec::new();
    chunk_each("recursive_character", text, &kwargs, |c| {
        streamed.push(c.to_owned());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(streamed, all);
    let mut first = Vec::new();
    chunk_each("recursive_character", text, &kwargs, |c| {
        first.push(c.to_owned());
        if first.len() == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(first, all[..3]);
}
