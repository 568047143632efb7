//! Engine behaviour on the real default model: semantics, kwargs (normalize, truncate_dim,
//! instruction, prompts), local directories, errors, concurrency and batching, the cache,
//! and the JSON-lines interface.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgml_engine::{embed_json_lines, Embedder, Engine, EngineConfig, EngineError};
use serde_json::{json, Value};

#[path = "support/default_model.rs"]
mod default_model;
use default_model::{engine, env, snapshot_dir, MODEL};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (norm(a) * norm(b)).max(1e-12)
}

fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Copies (following symlinks) the default model's files into `dir`.
fn copy_model(dir: &Path) {
    let src = snapshot_dir();
    for name in [
        "onnx/model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ] {
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(src.join(name), &to).expect("copy model file");
    }
}

fn texts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn man_eating_food_is_closer_to_bread_than_to_horse() {
    let v = engine()
        .embed(
            MODEL,
            texts(&[
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "A man is riding a horse.",
            ]),
            &Value::Null,
        )
        .await
        .expect("embed");
    let bread = cosine(&v[0], &v[1]);
    let horse = cosine(&v[0], &v[2]);
    assert!(bread > horse + 0.1, "bread {bread} horse {horse}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_dim_cuts_and_normalize_embeddings_renormalises() {
    let engine = engine();
    let text = texts(&["Matryoshka dolls nest inside each other"]);
    let full = engine
        .embed(MODEL, text.clone(), &Value::Null)
        .await
        .expect("full");
    let cut = engine
        .embed(MODEL, text.clone(), &json!({"truncate_dim": 64}))
        .await
        .expect("cut");
    assert_eq!(cut[0].len(), 64);
    assert_eq!(cut[0][..], full[0][..64]);
    assert!(
        norm(&cut[0]) < 0.99,
        "truncation after the Normalize module leaves a shorter vector"
    );
    let unit = engine
        .embed(
            MODEL,
            text,
            &json!({"truncate_dim": 64, "normalize_embeddings": true}),
        )
        .await
        .expect("unit");
    assert!((norm(&unit[0]) - 1.0).abs() < 1e-5);
    assert_eq!(
        engine
            .dimension(MODEL, &json!({"truncate_dim": 64}))
            .await
            .expect("dim"),
        64
    );
    let err = engine
        .embed(MODEL, texts(&["x"]), &json!({"truncate_dim": 999}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023");
    assert!(err.to_string().contains("truncate_dim"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_model_without_normalize_module_honours_normalize_embeddings() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_model(dir.path());
    let model = dir.path().to_str().expect("utf-8 path");
    let engine = engine();
    let text = texts(&["a local model directory"]);
    let hub = engine
        .embed(MODEL, text.clone(), &Value::Null)
        .await
        .expect("hub");
    let local = engine
        .embed(model, text.clone(), &Value::Null)
        .await
        .expect("local");
    assert!(cosine(&hub[0], &local[0]) > 0.99999);
    // Drop the Normalize module: raw mean pooling is not unit length until asked.
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
    )
    .expect("write modules.json");
    let fresh = Engine::new(EngineConfig {
        allow_download: false,
        allowed_model_dirs: vec![std::env::temp_dir()],
        cache_bytes: 0,
        ..EngineConfig::default()
    })
    .expect("engine");
    let raw = fresh
        .embed(model, text.clone(), &Value::Null)
        .await
        .expect("raw");
    assert!((norm(&raw[0]) - 1.0).abs() > 0.01, "norm {}", norm(&raw[0]));
    let unit = fresh
        .embed(model, text, &json!({"normalize_embeddings": true}))
        .await
        .expect("unit");
    assert!((norm(&unit[0]) - 1.0).abs() < 1e-5);
    assert!(cosine(&raw[0], &unit[0]) > 0.99999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prompts_and_instruction_for_instructor_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("my-instructor-base");
    copy_model(&model_dir);
    std::fs::write(
        model_dir.join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}"#,
    )
    .expect("write prompts");
    let model = model_dir.to_str().expect("utf-8 path");
    let engine = engine();
    let text = texts(&["what is a vector database"]);
    let named = engine
        .embed(model, text.clone(), &json!({"prompt_name": "query"}))
        .await
        .expect("named");
    let literal = engine
        .embed(model, text.clone(), &json!({"prompt": "query: "}))
        .await
        .expect("literal");
    assert_eq!(named, literal);
    let err = engine
        .embed(model, text.clone(), &json!({"prompt_name": "nope"}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023");
    assert!(err.to_string().contains("prompt_name"), "{err}");

    // An instruction is prepended, then masked out of pooling (INSTRUCTOR semantics): the
    // result differs both from the bare text and from the same prompt pooled in full.
    let instruction = "Represent the science question for retrieval: ";
    let instructed = engine
        .embed(model, text.clone(), &json!({"instruction": instruction}))
        .await
        .expect("instr");
    let prompted = engine
        .embed(model, text.clone(), &json!({"prompt": instruction}))
        .await
        .expect("prompt");
    let bare = engine
        .embed(model, text.clone(), &Value::Null)
        .await
        .expect("bare");
    assert!(cosine(&instructed[0], &prompted[0]) < 0.9999);
    assert!(cosine(&instructed[0], &bare[0]) < 0.9999);
    // Non-INSTRUCTOR models refuse the key.
    let err = engine
        .embed(MODEL, text, &json!({"instruction": instruction}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023");
    assert!(err.to_string().contains("instruction"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_error_names_the_model_the_cache_and_how_to_enable_downloads() {
    let err = engine()
        .embed("nobody/no-such-model", texts(&["x"]), &Value::Null)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "58000");
    let msg = err.to_string();
    assert!(msg.contains("nobody/no-such-model"), "{msg}");
    let hub = PathBuf::from(env("HF_HOME")).join("hub");
    assert!(msg.contains(&hub.display().to_string()), "{msg}");
    assert!(msg.contains("downloads are disabled"), "{msg}");
    assert!(msg.contains("--allow-downloads"), "{msg}");
    assert!(matches!(err, EngineError::ModelNotCached { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_onnx_and_missing_tokenizer_are_load_errors() {
    let engine = engine();
    let dir = tempfile::tempdir().expect("tempdir");
    copy_model(dir.path());
    std::fs::write(
        dir.path().join("onnx/model.onnx"),
        b"this is not a protobuf",
    )
    .expect("corrupt");
    let model = dir.path().to_str().expect("utf-8 path");
    let err = engine
        .embed(model, texts(&["x"]), &Value::Null)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "58000", "{err}");
    assert!(err.to_string().contains("model.onnx"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("rm");
    let model = dir.path().to_str().expect("utf-8 path");
    let err = engine
        .embed(model, texts(&["x"]), &Value::Null)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "58000");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kwargs_are_22023_naming_the_key() {
    let engine = engine();
    for (kwargs, key) in [
        (json!({"normalise": true}), "normalise"),
        (json!({"device": "quantum"}), "device"),
        (json!({"batch_size": -1}), "batch_size"),
    ] {
        let err = engine
            .embed(MODEL, texts(&["x"]), &kwargs)
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        assert!(err.to_string().contains(key), "{err}");
    }
    // batch_size only tunes speed: accepted.
    engine
        .embed(MODEL, texts(&["x"]), &json!({"batch_size": 8}))
        .await
        .expect("batch_size accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_get_their_own_vectors_and_are_batched() {
    let engine = Engine::new(EngineConfig {
        allow_download: false,
        allowed_model_dirs: vec![std::env::temp_dir()],
        cache_bytes: 0,
        ..EngineConfig::default()
    })
    .expect("engine");
    let inputs: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "caller {i} writes about {} things",
                ["cats", "tax law", "rust", "bread", "trains"][i % 5]
            )
        })
        .collect();
    let mut singles = Vec::new();
    for text in &inputs {
        singles.push(
            engine
                .embed(MODEL, vec![text.clone()], &Value::Null)
                .await
                .expect("single")
                .remove(0),
        );
    }
    let before = engine.metrics();
    let shared = Arc::new(engine.clone());
    let tasks: Vec<_> = inputs
        .iter()
        .cloned()
        .map(|text| {
            let engine = Arc::clone(&shared);
            tokio::spawn(async move { engine.embed(MODEL, vec![text], &Value::Null).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let got = task.await.expect("join").expect("embed").remove(0);
        assert!(
            cosine(&got, &singles[i]) >= 0.9999,
            "caller {i}: {}",
            cosine(&got, &singles[i])
        );
    }
    let after = engine.metrics();
    let batches = after.batches - before.batches;
    assert_eq!(after.batched_texts - before.batched_texts, 50);
    assert!(
        batches < 50,
        "50 callers ran in {batches} batches: nothing was coalesced"
    );
    assert!(after.max_batch_size > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_texts_are_computed_once_and_cached() {
    let engine = engine();
    let text = "the same sentence, several times".to_string();
    let v = engine
        .embed(MODEL, vec![text.clone(); 4], &Value::Null)
        .await
        .expect("embed");
    assert!(v.windows(2).all(|w| w[0] == w[1]));
    let m = engine.metrics();
    assert_eq!(m.deduplicated_texts, 3);
    assert_eq!(m.batched_texts, 1);
    let again = engine
        .embed(MODEL, vec![text], &Value::Null)
        .await
        .expect("embed");
    assert_eq!(again[0], v[0]);
    let m2 = engine.metrics();
    assert_eq!(m2.cache_hits - m.cache_hits, 1);
    assert_eq!(m2.batched_texts, 1, "a cache hit runs no inference");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_in_vectors_out_in_order() {
    let engine = engine();
    let input = "\"first line\"\n\"second \\\"quoted\\\" line\"\n\"\"\n";
    let mut out = Vec::new();
    let n = embed_json_lines(&engine, MODEL, &Value::Null, input.as_bytes(), &mut out)
        .await
        .expect("jsonl");
    assert_eq!(n, 3);
    let lines: Vec<Vec<f32>> = std::str::from_utf8(&out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("array of floats"))
        .collect();
    let direct = engine
        .embed(
            MODEL,
            texts(&["first line", "second \"quoted\" line", ""]),
            &Value::Null,
        )
        .await
        .expect("embed");
    assert_eq!(lines, direct);
    let err = embed_json_lines(
        &engine,
        MODEL,
        &Value::Null,
        "\"ok\"\nnot json\n".as_bytes(),
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_named_paths_and_oversized_texts_are_refused_before_any_work() {
    let engine = engine();
    for (model, kwargs, state) in [
        ("/etc", json!({}), "42501"),
        ("../../x", json!({}), "22023"),
        (
            MODEL,
            json!({"file_name": "../../../../etc/passwd"}),
            "22023",
        ),
        (MODEL, json!({"file_name": "/etc/passwd"}), "22023"),
        (MODEL, json!({"batch_size": 1e12}), "22023"),
    ] {
        let err = engine
            .embed(model, texts(&["x"]), &kwargs)
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), state, "{model} {kwargs}: {err}");
    }
    let huge = vec!["x".repeat(100 << 20)];
    let err = engine.embed(MODEL, huge, &Value::Null).await.unwrap_err();
    assert_eq!(err.sqlstate(), "54000", "{err}");
    assert!(err.to_string().contains("bytes per text"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_text_embeds_like_its_first_words() {
    let engine = engine();
    let huge = "lorem ipsum dolor sit amet ".repeat(40_000);
    let prefix = "lorem ipsum dolor sit amet ".repeat(200);
    let v = engine
        .embed(MODEL, vec![huge, prefix], &Value::Null)
        .await
        .expect("1 MB text");
    let diff = v[0]
        .iter()
        .zip(&v[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-6, "max abs diff {diff}");
}
