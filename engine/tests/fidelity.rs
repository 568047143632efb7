//! Fidelity against an independent reference (Python onnxruntime + HF tokenizers + numpy
//! pooling in tests/reference.py) computed from the same model files: token ids equal,
//! cosine >= 0.9999 per text, dimension and norm checked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::path::PathBuf;
use std::process::{Command, Stdio};

use pgml_engine::Embedder;
use serde_json::{json, Value};

#[path = "support/default_model.rs"]
mod default_model;
use default_model::{engine, env, snapshot_dir, MODEL};

fn reference(texts: &[String], prompt: Option<&str>) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    reference_in(&snapshot_dir(), texts, prompt, false)
}

fn reference_in(
    dir: &std::path::Path,
    texts: &[String],
    prompt: Option<&str>,
    exclude_prompt: bool,
) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let python = PathBuf::from(env("PGML_PROXY_VENV")).join("bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the Python reference");
    let request = json!({"model_dir": dir, "texts": texts, "prompt": prompt, "exclude_prompt": exclude_prompt});
    serde_json::to_writer(child.stdin.take().expect("stdin"), &request).expect("write request");
    let out = child.wait_with_output().expect("reference output");
    assert!(out.status.success(), "reference failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let ids = serde_json::from_value(v["ids"].clone()).expect("ids");
    let vectors = serde_json::from_value(v["vectors"].clone()).expect("vectors");
    (ids, vectors)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn varied_texts() -> Vec<String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_and_token_ids_match_the_python_reference() {
    let texts = varied_texts();
    let (ref_ids, ref_vectors) = reference(&texts, None);
    let engine = engine();
    let ids = engine
        .token_ids(MODEL, texts.clone(), &Value::Null)
        .await
        .expect("ids");
    assert_eq!(ids, ref_ids, "token ids differ from HF tokenizers");
    // The long text is cut at max_seq_length 256 (from sentence_bert_config.json), not at the
    // tokenizer.json's own 128.
    assert_eq!(ids[texts.len() - 1].len(), 256);
    let vectors = engine
        .embed(MODEL, texts.clone(), &Value::Null)
        .await
        .expect("embed");
    assert_eq!(vectors.len(), texts.len());
    for (i, (v, r)) in vectors.iter().zip(&ref_vectors).enumerate() {
        assert_eq!(v.len(), 384, "dimension of text {i}");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "Normalize module applied: norm {norm} for text {i}"
        );
        let c = cosine(v, r);
        assert!(c >= 0.9999, "text {i} {:?}: cosine {c}", texts[i]);
    }
    assert_eq!(
        engine.dimension(MODEL, &Value::Null).await.expect("dim"),
        384
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_is_prepended_like_the_reference() {
    let texts = vec![
        "how do I bake bread".to_string(),
        "the weather today".to_string(),
    ];
    let prompt = "query: ";
    let (ref_ids, ref_vectors) = reference(&texts, Some(prompt));
    let engine = engine();
    let kwargs = json!({"prompt": prompt});
    let ids = engine
        .token_ids(MODEL, texts.clone(), &kwargs)
        .await
        .expect("ids");
    assert_eq!(ids, ref_ids);
    let vectors = engine
        .embed(MODEL, texts.clone(), &kwargs)
        .await
        .expect("embed");
    let plain = engine
        .embed(MODEL, texts.clone(), &Value::Null)
        .await
        .expect("embed");
    for i in 0..texts.len() {
        assert!(cosine(&vectors[i], &ref_vectors[i]) >= 0.9999);
        assert!(
            cosine(&vectors[i], &plain[i]) < 0.9999,
            "prompt changed nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instruction_is_excluded_from_pooling_like_the_reference() {
    // An INSTRUCTOR-named local directory over the default model's files.
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("local-instructor");
    std::os::unix::fs::symlink(snapshot_dir(), &model_dir).expect("symlink");
    let texts = vec![
        "Revenue grew 12% in the third quarter".to_string(),
        "tiny".to_string(),
    ];
    let instruction = "Represent the Financial statement: ";
    let (_, ref_vectors) = reference_in(&model_dir, &texts, Some(instruction), true);
    let model = model_dir.to_str().expect("utf-8 path");
    let vectors = engine()
        .embed(model, texts.clone(), &json!({"instruction": instruction}))
        .await
        .expect("embed");
    for (i, (v, r)) in vectors.iter().zip(&ref_vectors).enumerate() {
        let c = cosine(v, r);
        assert!(c >= 0.9999, "text {i}: cosine {c}");
    }
}
