//! The splitter's own memory stays proportional to the text: no list of pieces (one per code
//! point at worst) is built. Its own test binary, so that no other test's allocations count in
//! the process's peak.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use pgml_chunk::chunk;
use serde_json::json;

/// The process's peak resident memory (VmHWM), in bytes.
#[cfg(target_os = "linux")]
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// 16 MiB that split into one piece per byte, merged into a single chunk (a chunk_size larger
/// than the text): the pieces took 56 bytes each (~900 MB) when they were collected.
#[cfg(target_os = "linux")]
#[test]
fn sixteen_mebibytes_of_one_byte_pieces_take_a_few_times_the_text() {
    let cases = [
        (
            "solid",
            "a".repeat(16 << 20),
            json!({"chunk_size": 1e9, "chunk_overlap": 0}),
        ),
        (
            "spaces",
            " ".repeat(16 << 20),
            json!({"chunk_size": 1e9, "chunk_overlap": 0}),
        ),
        (
            "a regex",
            "ab".repeat(8 << 20),
            json!({"separators": ["(?=a)"], "is_separator_regex": true, "chunk_size": 1e9, "chunk_overlap": 0}),
        ),
    ];
    // One baseline: a case's memory freed is reused by the next, so each case's peak is
    // measured against the process's peak before any of them.
    let before = peak_rss();
    for (name, text, kwargs) in cases {
        let chunks = chunk("recursive_character", &text, &kwargs).unwrap();
        let grown = peak_rss().saturating_sub(before);
        assert!(chunks.len() <= 1, "{name}: {}", chunks.len());
        eprintln!("{name}: peak grew by {} MiB", grown >> 20);
        assert!(
            grown < 4 * text.len(),
            "{name}: the peak grew by {} MiB for texts of {} MiB",
            grown >> 20,
            text.len() >> 20
        );
    }
}
