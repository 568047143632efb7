//! Fidelity against an independent reference (Python onnxruntime + HF tokenizers + numpy
//! pooling in tests/reference.py) computed from the same model files: token ids equal,
//! cosine >= 0.9999 per text, dimension and norm checked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use pgml_engine::Embedder;
use serde_json::{json, Value};

#[path = "support/default_model.rs"]
mod default_model;
use default_model::{engine, snapshot_dir, MODEL};
#[path = "support/reference.rs"]
mod reference;
use reference::{cosine, reference_in, varied_texts};

fn reference(texts: &[String], prompt: Option<&str>) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    reference_in(&snapshot_dir(), texts, prompt, false)
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
