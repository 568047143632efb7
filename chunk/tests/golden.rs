//! Golden test: every case of a varied corpus is split by pgml-chunk and, live, by LangChain
//! as PostgresML calls it (`scripts/chunk_goldens.py` in the project's venv); the chunks (or
//! the Python exception class) must be identical. Needs `make setup` (langchain-text-splitters
//! in `.venv`); without it the test fails, it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

struct Case {
    splitter: &'static str,
    text: String,
    kwargs: Value,
}

fn texts() -> Vec<String> {
    let prose = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, \
                 and the clocks were striking thirteen.\n\nCall me Ishmael. Some years ago, never \
                 mind how long precisely, having little or no money in my purse, I thought I would \
                 sail about a little.\nA second line of the same paragraph.\n\n\nLast paragraph \
                 after three newlines.";
    let markdown = "# Title\n\nIntro paragraph with *emphasis* and `code`.\n\n## Section one\n\n\
                    - item one\n- item two\n  - nested item\n\n```python\ndef f(x):\n    return x\n\
                    ```\n\n### Sub section\n\nText after code.\n\n***\n\nAfter a rule.\n\n---\n\n\
                    ___\n\n#{1,6} literal heading regex\n#### Deep heading\nTrailing line.";
    let latex = "\\documentclass{article}\n\\begin{document}\n\\chapter{Intro}\nSome text $x^2$ \
                 and $$\\int_0^1 f$$.\n\\section{Method}\nWe use \\emph{this}.\n\\\\section{Double}\n\
                 \\\\subsection{Doubled sub}\nText.\n\\begin{itemize}\n\\item one\n\\item two\n\
                 \\end{itemize}\n\\\\begin{align}\na &= b\n\\end{align}\n\\end{document}";
    let python = "import os\n\nclass Foo:\n    \"\"\"Doc.\"\"\"\n\n    def bar(self, x):\n        \
                  return x + 1\n\n\tdef tabbed(self):\n\t\tpass\n\ndef baz():\n    for i in \
                  range(10):\n        print(i)\n\nclass Empty:\n    pass\n";
    vec![
        prose.to_owned(),
        String::new(),
        "word".to_owned(),
        "Supercalifragilisticexpialidocious_antidisestablishmentarianism short words then \
         Pneumonoultramicroscopicsilicovolcanoconiosis"
            .to_owned(),
        "日本語のテキストを分割します。これは二番目の文です、そして三番目。\n\n中文文本也在这里，\
         没有空格。"
            .to_owned(),
        "emoji 👩‍👩‍👧 family 🎉🎉🎉 party 🇫🇷 flag\n\nmore 😀😀 text 🚀".to_owned(),
        "cafe\u{301} nai\u{308}ve re\u{301}sume\u{301} Z\u{335}\u{30d}\u{31b}a\u{336}lgo \
         combining marks e\u{301}e\u{301}e\u{301}"
            .to_owned(),
        "  leading   spaces\t\ttabs \n\n\n   \n  lines  \u{a0}nbsp\u{3000}ideographic \u{1c}fs\u{2028}ls "
            .to_owned(),
        "\n\n\n\n".to_owned(),
        "     ".to_owned(),
        "\n \n \n\t\n".to_owned(),
        markdown.to_owned(),
        latex.to_owned(),
        python.to_owned(),
        "a.b.c.d,e,f g h\ni\nj k. l, m.".to_owned(),
    ]
}

fn kwargs_sets(splitter: &str) -> Vec<Value> {
    let mut sets = vec![
        json!({}),
        json!({"chunk_size": 1, "chunk_overlap": 0}),
        json!({"chunk_size": 10, "chunk_overlap": 0}),
        json!({"chunk_size": 10, "chunk_overlap": 5}),
        json!({"chunk_size": 25, "chunk_overlap": 10}),
        json!({"chunk_size": 7, "chunk_overlap": 7}),
        json!({"chunk_size": 40, "chunk_overlap": 8, "keep_separator": false}),
        json!({"chunk_size": 40, "chunk_overlap": 8, "keep_separator": "end"}),
        json!({"chunk_size": 30, "chunk_overlap": 3, "strip_whitespace": false}),
    ];
    match splitter {
        "recursive_character" => sets.extend([
            json!({"chunk_size": 20, "chunk_overlap": 4, "separators": [".", ",", " "]}),
            json!({"chunk_size": 12, "chunk_overlap": 2, "separators": ["。", "、", "，", ""]}),
            json!({"chunk_size": 15, "chunk_overlap": 0, "separators": ["\\n+", "\\s+", ""],
                   "is_separator_regex": true}),
            json!({"chunk_size": 15, "chunk_overlap": 5, "separators": ["(\\.)", " "],
                   "is_separator_regex": true, "keep_separator": false}),
            json!({"chunk_size": 18, "chunk_overlap": 6, "separators": "e "}),
            json!({"chunk_size": 300, "chunk_overlap": 0}),
        ]),
        "character" => sets.extend([
            json!({"chunk_size": 20, "chunk_overlap": 5, "separator": " "}),
            json!({"chunk_size": 20, "chunk_overlap": 0, "separator": "\n"}),
            json!({"chunk_size": 9, "chunk_overlap": 3, "separator": ""}),
            json!({"chunk_size": 16, "chunk_overlap": 4, "separator": "\\s+",
                   "is_separator_regex": true}),
            json!({"chunk_size": 16, "chunk_overlap": 4, "separator": " ",
                   "keep_separator": true}),
            json!({"chunk_size": 16, "chunk_overlap": 4, "separator": ". ",
                   "keep_separator": "end", "strip_whitespace": false}),
        ]),
        _ => sets.extend([
            json!({"chunk_size": 60, "chunk_overlap": 10, "is_separator_regex": true}),
            json!({"chunk_size": 35, "chunk_overlap": 0, "is_separator_regex": true,
                   "keep_separator": false}),
        ]),
    }
    sets
}

/// Inputs LangChain rejects (or accepts in odd shapes): the error class must match.
fn edge_cases() -> Vec<Case> {
    let t = "some text to split, with words";
    let case = |splitter: &'static str, kwargs: Value| Case {
        splitter,
        text: t.to_owned(),
        kwargs,
    };
    vec![
        case("recursive_character", json!({"chunk_size": 10})),
        case(
            "recursive_character",
            json!({"chunk_size": 0, "chunk_overlap": 0}),
        ),
        case("recursive_character", json!({"chunk_size": -5})),
        case("character", json!({"chunk_overlap": -1})),
        case("character", json!({"chunk_size": 5, "chunk_overlap": 6})),
        case("recursive_character", json!({"foo": 1})),
        case("recursive_character", json!({"separator": " "})),
        case("character", json!({"separators": [" "]})),
        case("markdown", json!({"separators": [" "]})),
        case(
            "latex",
            json!({"chunk_size": 10, "chunk_overlap": 0, "bogus": true}),
        ),
        case("recursive_character", json!({"chunk_size": "10"})),
        case("recursive_character", json!({"chunk_size": null})),
        case(
            "recursive_character",
            json!({"chunk_size": 10, "chunk_overlap": "1"}),
        ),
        case(
            "character",
            json!({"chunk_size": 10, "chunk_overlap": 0, "separator": null}),
        ),
        case("recursive_character", json!({"length_function": 1})),
        case("character", json!({"length_function": "len"})),
        case("recursive_character", json!([])),
        case("recursive_character", json!(null)),
        case("Recursive_Character", json!({})),
        case("sentence", json!({})),
        case("", json!({})),
        case(
            "recursive_character",
            json!({"chunk_size": 10.5, "chunk_overlap": 2.5}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 12.0, "chunk_overlap": 0}),
        ),
        case(
            "character",
            json!({"chunk_size": 8, "chunk_overlap": true, "separator": " "}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "keep_separator": 1}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "keep_separator": "start"}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "keep_separator": ""}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "keep_separator": [0]}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "strip_whitespace": 0}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "add_start_index": true}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "separators": []}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "separators": null}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "separators": [","], "is_separator_regex": 1}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "separators": ["(,)( )?"], "is_separator_regex": true,
                                           "keep_separator": "end"}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "separators": ["(,)( )?"], "is_separator_regex": true,
                                           "keep_separator": false}),
        ),
        case(
            "recursive_character",
            json!({"chunk_size": 8, "chunk_overlap": 0,
                                           "separators": ["(x)?,"], "is_separator_regex": true,
                                           "keep_separator": "end"}),
        ),
        case(
            "character",
            json!({"chunk_size": 8, "chunk_overlap": 0, "separator": "[",
                                 "is_separator_regex": true}),
        ),
        case(
            "character",
            json!({"chunk_size": 8, "chunk_overlap": 0, "separator": "o*",
                                 "is_separator_regex": true, "keep_separator": true}),
        ),
        case(
            "character",
            json!({"chunk_size": 8, "chunk_overlap": 0, "separator": "\\b",
                                 "is_separator_regex": true}),
        ),
        case(
            "character",
            json!({"chunk_size": 8, "chunk_overlap": 0, "separator": "t{,2}e",
                                 "is_separator_regex": true, "keep_separator": "end"}),
        ),
        case(
            "character",
            json!({"chunk_size": 8, "chunk_overlap": 0, "separator": "x{",
                                 "is_separator_regex": true}),
        ),
    ]
}

/// Python `re` separators: look-around, backreferences, named groups, `$`, `\\b`, `\\W`.
fn regex_cases() -> Vec<Case> {
    vec![
        sentences(
            "character",
            json!({"chunk_size": 30, "chunk_overlap": 0,
                                      "separator": "(?<=\\.) ", "is_separator_regex": true}),
        ),
        sentences(
            "character",
            json!({"chunk_size": 30, "chunk_overlap": 10,
                                      "separator": "(?=[A-Z])", "is_separator_regex": true}),
        ),
        sentences(
            "character",
            json!({"chunk_size": 25, "chunk_overlap": 5,
                                      "separator": "(?<![a-z])\\s", "is_separator_regex": true}),
        ),
        sentences(
            "character",
            json!({"chunk_size": 25, "chunk_overlap": 5,
                                      "separator": "(?!e)\\s", "is_separator_regex": true}),
        ),
        sentences(
            "recursive_character",
            json!({"chunk_size": 25, "chunk_overlap": 5,
                                      "separators": ["(?<=[.!?]) ", "\\s", ""],
                                      "is_separator_regex": true}),
        ),
        sentences(
            "recursive_character",
            json!({"chunk_size": 20, "chunk_overlap": 0,
                                      "separators": ["(\\w)\\1", " "],
                                      "is_separator_regex": true, "keep_separator": false}),
        ),
        sentences(
            "recursive_character",
            json!({"chunk_size": 20, "chunk_overlap": 0,
                                      "separators": ["\\b", ""], "is_separator_regex": true}),
        ),
        sentences(
            "recursive_character",
            json!({"chunk_size": 12, "chunk_overlap": 0,
                                      "separators": ["\\W+", ""], "is_separator_regex": true}),
        ),
        sentences(
            "character",
            json!({"chunk_size": 12, "chunk_overlap": 0, "separator": "$",
                                      "is_separator_regex": true, "keep_separator": "end"}),
        ),
        sentences(
            "character",
            json!({"chunk_size": 12, "chunk_overlap": 0,
                                      "separator": "(?P<d>[.!?])", "is_separator_regex": true}),
        ),
        sentences(
            "character",
            json!({"chunk_size": 12, "chunk_overlap": 0,
                                      "separator": "(?<=a+) ", "is_separator_regex": true}),
        ),
    ]
}

fn sentences(splitter: &'static str, kwargs: Value) -> Case {
    Case {
        splitter,
        text: "Hello there. General Kenobi! You are a bold one? Yes.  Indeed\tso, aa bb.\n"
            .to_owned(),
        kwargs,
    }
}

/// Deterministic pseudo-random texts over an alphabet of separators, multi-byte characters
/// and preset markers, with random sizes: a fuzz-like sweep in the golden corpus.
fn random_cases() -> Vec<Case> {
    const ALPHABET: [&str; 22] = [
        "a",
        "b",
        "cd",
        " ",
        " ",
        "\n",
        "\n\n",
        "\t",
        "é",
        "e\u{301}",
        "日本",
        "😀",
        "🇫🇷",
        "#",
        "## ",
        "```\n",
        "\n\\\\section{",
        "$",
        "\nclass ",
        "\ndef ",
        ".",
        "\u{a0}",
    ];
    const SPLITTERS: [&str; 5] = [
        "recursive_character",
        "character",
        "markdown",
        "latex",
        "python",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut cases = Vec::new();
    for i in 0..250 {
        let len = next(60);
        let text: String = (0..len)
            .map(|_| ALPHABET[next(ALPHABET.len() as u64) as usize])
            .collect();
        let size = 1 + next(25);
        let overlap = next(size + 1);
        let mut kwargs = json!({"chunk_size": size, "chunk_overlap": overlap});
        let splitter = SPLITTERS[i % SPLITTERS.len()];
        match next(4) {
            0 => kwargs["keep_separator"] = json!(false),
            1 => kwargs["keep_separator"] = json!("end"),
            2 => kwargs["keep_separator"] = json!(true),
            _ => {}
        }
        if next(3) == 0 {
            kwargs["strip_whitespace"] = json!(false);
        }
        if splitter == "character" {
            kwargs["separator"] = json!([" ", "\n", "", "\n\n", "é"][next(5) as usize]);
        }
        cases.push(Case {
            splitter,
            text,
            kwargs,
        });
    }
    cases
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    for splitter in [
        "recursive_character",
        "character",
        "markdown",
        "latex",
        "python",
    ] {
        for kwargs in kwargs_sets(splitter) {
            for text in texts() {
                cases.push(Case {
                    splitter,
                    text,
                    kwargs: kwargs.clone(),
                });
            }
        }
    }
    cases.extend(edge_cases());
    cases.extend(regex_cases());
    cases.extend(random_cases());
    cases
}

fn python() -> PathBuf {
    let venv = std::env::var_os("PGML_PROXY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (the golden test needs langchain-text-splitters in the \
         project's venv)",
        python.display()
    );
    python
}

fn langchain(cases: &[Case]) -> Vec<Value> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| json!({"splitter": c.splitter, "text": c.text, "kwargs": c.kwargs}))
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chunk_goldens.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the venv's python");
    let body = serde_json::to_vec(&input).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "scripts/chunk_goldens.py failed (run `make setup` to install langchain-text-splitters \
         into the venv):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    results
}

#[test]
fn chunks_match_langchain() {
    let cases = corpus();
    let expected = langchain(&cases);
    let mut failures = Vec::new();
    for (i, (case, want)) in cases.iter().zip(&expected).enumerate() {
        let got = match pgml_chunk::chunk(case.splitter, &case.text, &case.kwargs) {
            Ok(chunks) => json!({ "chunks": chunks }),
            Err(err) => json!({ "error": err.python_exception().unwrap_or("unsupported") }),
        };
        if &got != want {
            failures.push(format!(
                "case {i}: {} {} text={:?}\n  langchain: {}\n  pgml-chunk: {}",
                case.splitter, case.kwargs, case.text, want, got
            ));
        }
    }
    eprintln!(
        "golden: {} of {} cases identical to LangChain",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
