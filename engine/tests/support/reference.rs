#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run
#![allow(dead_code)] // each test binary uses a different subset
//! Shared by the engine's fidelity tests: the independent Python reference (tests/reference.py:
//! HF tokenizers + onnxruntime + numpy pooling) run on a model directory, and cosine similarity.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Runs the Python script `tests/<script>` of the test venv with `request` as its JSON stdin
/// and returns its JSON stdout.
pub fn run_python(script: &str, request: &Value) -> Value {
    let venv = std::env::var("PGML_PROXY_VENV")
        .expect("PGML_PROXY_VENV must be set (run via make test or load .cache/env.mk)");
    let python = PathBuf::from(venv).join("bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the Python reference");
    serde_json::to_writer(child.stdin.take().expect("stdin"), request).expect("write request");
    let out = child.wait_with_output().expect("reference output");
    assert!(out.status.success(), "reference failed");
    serde_json::from_slice(&out.stdout).expect("reference JSON")
}

/// Token ids and pooled vectors of `texts` from the Python reference on the model in `dir`.
pub fn reference_in(
    dir: &Path,
    texts: &[String],
    prompt: Option<&str>,
    exclude_prompt: bool,
) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let request = json!({"model_dir": dir, "texts": texts, "prompt": prompt, "exclude_prompt": exclude_prompt});
    let v = run_python("reference.py", &request);
    let ids = serde_json::from_value(v["ids"].clone()).expect("ids");
    let vectors = serde_json::from_value(v["vectors"].clone()).expect("vectors");
    (ids, vectors)
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// Euclidean norm.
pub fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Texts that stress tokenization: empty, whitespace, accents, emoji, CJK, SQL-ish, long.
pub fn varied_texts() -> Vec<String> {
    let long =
        "The quick brown fox jumps over the lazy dog while the reviewer complains about shipping. "
            .repeat(30);
    vec![
        "A man is eating food.".into(),
        "hi mom".into(),
        String::new(),
        "   \t  ".into(),
        "Ünïcödé façade naïve café – “smart quotes” and 'single' \"double\"".into(),
        "😀🎉 emoji party 🚀🔥".into(),
        "我喜欢机器学习和自然语言处理。".into(),
        "日本語のテキストも埋め込みます".into(),
        "SELECT 'x'' OR 1=1; -- sql-ish text".into(),
        long,
        // Past the tokenizer's prefix (16 bytes a token): tokenized by a prefix first.
        "Große Übung, 机器学习 and many more words follow here. ".repeat(200),
    ]
}
