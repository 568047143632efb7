//! The public API beyond the golden corpus: error kinds and SQLSTATEs, and bounded work on
//! large texts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use pgml_chunk::{chunk, ChunkError};
use serde_json::json;

#[test]
fn defaults_are_postgresml_defaults() {
    // recursive_character, chunk_size 4000, overlap 200, separators \n\n \n " " "".
    let text = "one two three";
    assert_eq!(
        chunk("recursive_character", text, &json!({})).unwrap(),
        [text]
    );
    assert_eq!(
        chunk("character", "", &json!({})).unwrap(),
        Vec::<String>::new()
    );
    // chunk_size alone keeps the default overlap (200), which LangChain rejects.
    let err = chunk("recursive_character", text, &json!({"chunk_size": 100})).unwrap_err();
    assert_eq!(err.python_exception(), Some("ValueError"));
    assert_eq!(
        err.to_string(),
        "Got a larger chunk overlap (200) than chunk size (100), should be smaller."
    );
    assert_eq!(err.sqlstate(), "22023");
}

#[test]
fn errors_have_sqlstates() {
    let text = "some text";
    for name in ["nltk", "spacy"] {
        let err = chunk(name, text, &json!({})).unwrap_err();
        assert!(matches!(err, ChunkError::UnsupportedSplitter(_)), "{err:?}");
        assert_eq!(err.sqlstate(), "0A000");
        assert!(err.to_string().contains("recursive_character"), "{err}");
    }
    let err = chunk("words", text, &json!({})).unwrap_err();
    assert_eq!(err, ChunkError::UnknownSplitter("words".to_owned()));
    assert_eq!(err.to_string(), "Unknown splitter: words");
    assert_eq!(err.sqlstate(), "22023");

    let err = chunk("character", text, &json!({"separators": ["x"]})).unwrap_err();
    assert!(matches!(err, ChunkError::UnknownKwarg { ref name, .. } if name == "separators"));
    assert_eq!(err.sqlstate(), "22023");

    let err = chunk("character", text, &json!({"chunk_size": "big"})).unwrap_err();
    assert!(
        matches!(
            err,
            ChunkError::BadKwarg {
                python: "TypeError",
                ..
            }
        ),
        "{err:?}"
    );

    let err = chunk(
        "character",
        text,
        &json!({"separator": "(", "is_separator_regex": true}),
    )
    .unwrap_err();
    assert!(matches!(err, ChunkError::InvalidRegex { .. }), "{err:?}");
    assert_eq!(err.sqlstate(), "2201B");
}

/// A 1 MiB text through the shapes that could be slow: every code point its own piece, many
/// tiny chunks, look-around regexes, every separator tried at every level. Linear work
/// finishes far inside the (generous, debug-build) bound.
#[test]
fn one_mebibyte_is_quick() {
    let sentence = "The quick brown fox jumps over the lazy dog, née 日本語 😀. ";
    let mut prose = String::new();
    let mut i = 0;
    while prose.len() < 1 << 20 {
        prose.push_str(sentence);
        i += 1;
        if i % 7 == 0 {
            prose.push('\n');
        }
        if i % 31 == 0 {
            prose.push_str("\n\n");
        }
    }
    let solid = "a".repeat(1 << 20);
    let cases = [
        ("recursive_character", &prose, json!({})),
        ("recursive_character", &solid, json!({})),
        (
            "recursive_character",
            &solid,
            json!({"chunk_size": 3, "chunk_overlap": 1}),
        ),
        (
            "recursive_character",
            &prose,
            json!({"chunk_size": 1, "chunk_overlap": 0}),
        ),
        (
            "character",
            &prose,
            json!({"separator": "", "chunk_size": 50, "chunk_overlap": 50}),
        ),
        (
            "character",
            &prose,
            json!({"separator": "(?<=\\.) ", "is_separator_regex": true}),
        ),
        (
            "markdown",
            &prose,
            json!({"chunk_size": 100, "chunk_overlap": 20, "is_separator_regex": true}),
        ),
        (
            "latex",
            &solid,
            json!({"chunk_size": 100, "chunk_overlap": 20, "is_separator_regex": true}),
        ),
        (
            "python",
            &prose,
            json!({"chunk_size": 500, "chunk_overlap": 0, "keep_separator": "end"}),
        ),
    ];
    for (splitter, text, kwargs) in cases {
        let start = Instant::now();
        let answer = chunk(splitter, text, &kwargs).map(|chunks| chunks.len());
        let took = start.elapsed();
        // An overlap as large as the chunk: ~900,000 chunks of 50 characters, over
        // MAX_OUTPUT_BYTES once each chunk's overhead is counted, and refused as quickly.
        let dense = kwargs["chunk_overlap"] == json!(50);
        match answer {
            Ok(n) if !dense => assert!(n > 0),
            Err(ChunkError::OutputTooLarge) if dense => {}
            other => panic!("{splitter} {kwargs}: {other:?}"),
        }
        assert!(
            took < Duration::from_secs(20),
            "{splitter} {kwargs}: {took:?} for 1 MiB"
        );
        eprintln!("{splitter} {kwargs}: {answer:?} chunks in {took:?}");
    }
}

/// Overlap makes the output many times the text: a hostile kwargs must not make one call
/// allocate without bound. Past MAX_OUTPUT_BYTES the call fails with 54000.
#[test]
fn output_past_the_limit_is_refused_not_built() {
    let text = "ab ".repeat(400_000); // 1.2 MB; ~400 MB of chunks with this overlap
    let kwargs = json!({"chunk_size": 1000, "chunk_overlap": 999, "separator": " "});
    let recursive = json!({"chunk_size": 1000, "chunk_overlap": 999});
    for (splitter, kwargs) in [("character", &kwargs), ("recursive_character", &recursive)] {
        let started = Instant::now();
        let err = chunk(splitter, &text, kwargs).expect_err(splitter);
        assert_eq!(err, ChunkError::OutputTooLarge, "{splitter}");
        assert_eq!(err.sqlstate(), "54000");
        assert!(
            started.elapsed().as_secs() < 20,
            "{splitter}: refused early"
        );
    }
    // Under the limit the same overlap is fine.
    let small = "ab ".repeat(2_000);
    let chunks = chunk("character", &small, &kwargs).unwrap();
    let total: usize = chunks.iter().map(String::len).sum();
    assert!(total > small.len() && total <= pgml_chunk::MAX_OUTPUT_BYTES);
}
