//! Int8 and fp32 on the default model as `make setup` lays it (scripts/quantize_model.py:
//! onnx/model_int8.onnx and its fidelity record): int8 vectors stay within the floor of fp32,
//! precision is part of the cache key, the operator's --int8 choice applies when kwargs name
//! none, and the fidelity guard refuses int8 files without a record or below the floor
//! (unless the fallback to fp32 is on). Real ONNX Runtime, real models.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::path::Path;

use pgml_engine::{Embedder, Engine, EngineConfig, Fidelity, DEFAULT_INT8_MIN_COSINE};
use serde_json::{json, Value};

#[path = "support/default_model.rs"]
mod default_model;
use default_model::{engine, snapshot_dir, MODEL};
#[path = "support/reference.rs"]
mod reference;
use reference::{cosine, varied_texts};

fn int8() -> Value {
    json!({"precision": "int8"})
}

fn fp32() -> Value {
    json!({"precision": "fp32"})
}

/// Review-like texts of 20-200 words, as bench-engine's (another seed: not the held-out set).
fn reviews() -> Vec<String> {
    let words = "great terrible product shipping arrived broken works perfectly love hate \
                 battery screen price value quality customer service refund would recommend"
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>();
    let mut state = 7u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    (0..24)
        .map(|_| {
            let len = 20 + next(181);
            (0..len)
                .map(|_| words[next(words.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A model directory with the default model's files (copied) and, when given, an int8 file
/// (the real one) with `record` as its fidelity record.
fn model_dir(dir: &Path, record: Option<&str>) {
    let src = snapshot_dir();
    let mut names = vec![
        "onnx/model.onnx",
        "onnx/model_int8.onnx",
        "tokenizer.json",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ];
    if record.is_none() {
        names.retain(|n| *n != "onnx/model_int8.onnx");
    }
    for name in names {
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(src.join(name), &to).expect("copy model file");
    }
    if let Some(record) = record {
        std::fs::write(dir.join("onnx/model_int8.fidelity.json"), record).expect("record");
    }
}

fn engine_with(config: EngineConfig) -> Engine {
    Engine::new(EngineConfig {
        allow_download: false,
        allowed_model_dirs: vec![std::env::temp_dir()],
        ..config
    })
    .expect("engine")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_vectors_stay_within_the_floor_of_fp32() {
    let record = Fidelity::read(&snapshot_dir().join("onnx/model_int8.fidelity.json"))
        .expect("make setup lays the int8 file's fidelity record");
    assert!(
        record.min_cosine >= DEFAULT_INT8_MIN_COSINE,
        "shipped {record}"
    );
    let mut texts = reviews();
    texts.extend(varied_texts());
    let engine = engine();
    let full = engine
        .embed(MODEL, texts.clone(), &fp32())
        .await
        .expect("fp32");
    let quant = engine
        .embed(MODEL, texts.clone(), &int8())
        .await
        .expect("int8");
    let mut worst = 1.0f32;
    for (i, (a, b)) in full.iter().zip(&quant).enumerate() {
        assert_eq!(a.len(), b.len(), "text {i}");
        let c = cosine(a, b);
        worst = worst.min(c);
        assert!(c >= 0.99, "text {i} {:?}: int8 cosine {c}", texts[i]);
    }
    // Int8 really computes differently (this is not the fp32 file loaded twice).
    assert!(worst < 0.99999, "int8 identical to fp32: {worst}");
    // Plain kwargs stay fp32 by default.
    let default = engine
        .embed(MODEL, texts[..3].to_vec(), &Value::Null)
        .await
        .expect("default");
    assert_eq!(default, full[..3].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precision_is_part_of_the_cache_key() {
    let engine = engine();
    let text = vec!["the cache keeps int8 and fp32 apart".to_string()];
    let misses = |e: &Engine| e.metrics().cache_misses;
    let full = engine
        .embed(MODEL, text.clone(), &fp32())
        .await
        .expect("fp32");
    let after_fp32 = misses(&engine);
    let quant = engine
        .embed(MODEL, text.clone(), &int8())
        .await
        .expect("int8");
    assert_eq!(
        misses(&engine),
        after_fp32 + 1,
        "int8 must not hit the fp32 entry"
    );
    assert_ne!(full, quant);
    let hits = engine.metrics().cache_hits;
    let again = engine
        .embed(MODEL, text.clone(), &int8())
        .await
        .expect("int8 again");
    assert_eq!(again, quant);
    assert_eq!(engine.metrics().cache_hits, hits + 1);
    let plain = engine
        .embed(MODEL, text, &Value::Null)
        .await
        .expect("plain");
    assert_eq!(plain, full, "no kwargs is fp32, served from the fp32 entry");
    assert_eq!(engine.metrics().cache_hits, hits + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_int8_choice_applies_unless_kwargs_say_otherwise() {
    let chosen = engine_with(EngineConfig {
        int8_models: vec![MODEL.to_string()],
        ..EngineConfig::default()
    });
    let plain = engine();
    let text = vec!["operators opt in to int8 per model".to_string()];
    let by_setting = chosen
        .embed(MODEL, text.clone(), &Value::Null)
        .await
        .expect("setting");
    let by_kwargs = plain
        .embed(MODEL, text.clone(), &int8())
        .await
        .expect("kwargs");
    assert_eq!(by_setting, by_kwargs);
    let overridden = chosen
        .embed(MODEL, text.clone(), &fp32())
        .await
        .expect("fp32");
    let full = plain.embed(MODEL, text, &Value::Null).await.expect("plain");
    assert_eq!(overridden, full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_refuses_int8_without_a_passing_record_unless_fallback_is_on() {
    let low = tempfile::tempdir().expect("tempdir");
    model_dir(
        low.path(),
        Some(r#"{"min_cosine": 0.958, "mean_cosine": 0.994, "texts": 2000}"#),
    );
    let unrecorded = tempfile::tempdir().expect("tempdir");
    model_dir(unrecorded.path(), Some(""));
    std::fs::remove_file(unrecorded.path().join("onnx/model_int8.fidelity.json")).expect("rm");
    let absent = tempfile::tempdir().expect("tempdir");
    model_dir(absent.path(), None);
    let strict = engine_with(EngineConfig::default());
    let text = vec!["refused".to_string()];
    for (dir, why) in [
        (low.path(), "below the floor 0.99"),
        (unrecorded.path(), "no fidelity record"),
        (absent.path(), "no int8 file"),
    ] {
        let model = dir.to_str().expect("utf-8 path");
        let err = strict
            .embed(model, text.clone(), &int8())
            .await
            .expect_err("int8 must be refused");
        assert_eq!(err.sqlstate(), "22023", "{err}");
        let message = err.to_string();
        assert!(message.contains(why), "{message}");
        assert!(message.contains("--int8-fallback"), "{message}");
        // fp32 of the same model is fine.
        strict
            .embed(model, text.clone(), &fp32())
            .await
            .expect("fp32");
    }
    // A stricter floor refuses the shipped record too.
    let stricter = engine_with(EngineConfig {
        int8_min_cosine: 0.99999,
        ..EngineConfig::default()
    });
    let err = stricter
        .embed(MODEL, text.clone(), &int8())
        .await
        .expect_err("above the shipped minimum");
    assert!(err.to_string().contains("below the floor 0.99999"), "{err}");
    // With the fallback on, a refused int8 model computes in fp32.
    let lenient = engine_with(EngineConfig {
        int8_fallback: true,
        cache_bytes: 0,
        ..EngineConfig::default()
    });
    let model = low.path().to_str().expect("utf-8 path");
    let fallback = lenient
        .embed(model, text.clone(), &int8())
        .await
        .expect("fallback");
    let full = lenient.embed(model, text, &fp32()).await.expect("fp32");
    assert_eq!(fallback, full);
}
