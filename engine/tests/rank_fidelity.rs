#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run
//! pgml.rank fidelity against an independent reference (tests/rank_reference.py: Python
//! onnxruntime + HF tokenizers redoing sentence-transformers' CrossEncoder.rank) on the same
//! model files: token ids equal, scores within 1e-4, identical order; plus the engine's
//! model-kind, kwargs and input errors.

use std::path::PathBuf;

use pgml_engine::{Embedder, Ranker};
use serde_json::{json, Value};

#[path = "support/default_model.rs"]
mod default_model;
#[path = "support/reference.rs"]
mod reference_support;
use default_model::{engine, env, MODEL};
use reference_support::run_python;

/// The test cross-encoder laid out by `make setup` (scripts/lay_reranker.py).
const RERANKER: &str = "aegis/policy-nli-cross-encoder";

fn reranker_dir() -> PathBuf {
    let repo = PathBuf::from(env("HF_HOME")).join("hub/models--aegis--policy-nli-cross-encoder");
    let commit = std::fs::read_to_string(repo.join("refs/main"))
        .expect("test cross-encoder laid out by make setup");
    repo.join("snapshots").join(commit.trim())
}

struct Set {
    query: String,
    documents: Vec<String>,
    kwargs: Value,
}

struct Reference {
    ids: Vec<Vec<u32>>,
    scores: Vec<f32>,
    order: Vec<usize>,
}

fn reference(sets: &[Set]) -> Vec<Reference> {
    let request = json!({
        "model_dir": reranker_dir(),
        "sets": sets.iter().map(|s| json!({
            "query": s.query,
            "documents": s.documents,
            "batch_size": s.kwargs.get("batch_size").and_then(Value::as_u64).unwrap_or(32),
            "top_k": s.kwargs.get("top_k").cloned().unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
    });
    let v: Vec<Value> =
        serde_json::from_value(run_python("rank_reference.py", &request)).expect("reference JSON");
    v.into_iter()
        .map(|r| Reference {
            ids: serde_json::from_value(r["ids"].clone()).unwrap(),
            scores: serde_json::from_value(r["scores"].clone()).unwrap(),
            order: serde_json::from_value(r["order"].clone()).unwrap(),
        })
        .collect()
}

fn docs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn sets() -> Vec<Set> {
    let france = docs(&[
        "Paris is the capital and most populous city of France.",
        "Bananas are yellow and rich in potassium.",
        "France's capital city, Paris, lies on the Seine.",
        "Berlin is the capital of Germany.",
        "The Eiffel Tower is in Paris.",
    ]);
    let long_doc =
        "Customers may return any item within thirty days of delivery for a full refund. "
            .repeat(60);
    // Past the tokenizer's prefix (16 bytes a token x 512): tokenized by a prefix first.
    let huge_doc = "Große Übung, 机器学习 and many more words follow here. ".repeat(400);
    let many: Vec<String> = (0..70)
        .map(|i| format!("Document number {i} talks about topic {}.", i % 7))
        .collect();
    let set = |query: &str, documents: Vec<String>, kwargs: Value| Set {
        query: query.to_string(),
        documents,
        kwargs,
    };
    vec![
        set("What is the capital of France?", france.clone(), json!({})),
        set(
            "What is the capital of France?",
            france.clone(),
            json!({"top_k": 2}),
        ),
        set(
            "What is the capital of France?",
            france.clone(),
            json!({"top_k": 0}),
        ),
        set(
            "What is the capital of France?",
            france.clone(),
            json!({"top_k": 99, "return_documents": true}),
        ),
        set(
            "What is the capital of France?",
            france.clone(),
            json!({"batch_size": 1}),
        ),
        set(
            "What is the capital of France?",
            france,
            json!({"batch_size": 2}),
        ),
        set(
            "Can I return an item?",
            docs(&[
                "Returns are accepted within 30 days.",
                "We ship worldwide.",
                "",
            ]),
            json!({}),
        ),
        set(
            "refund policy",
            vec![
                long_doc.clone(),
                "Refunds take five days.".into(),
                long_doc.clone(),
            ],
            json!({}),
        ),
        set(
            &long_doc,
            docs(&["Refunds are possible.", "Cats purr."]),
            json!({}),
        ),
        set(&long_doc, vec![long_doc.clone()], json!({})),
        set(
            "machine learning",
            vec![
                huge_doc.clone(),
                "Deep learning is a kind of machine learning.".into(),
            ],
            json!({}),
        ),
        set(&huge_doc, vec![huge_doc.clone(), "short".into()], json!({})),
        set(
            "Ünïcödé café naïve façade",
            docs(&[
                "Un café naïf près de la façade.",
                "😀🎉 emoji party 🚀🔥",
                "我喜欢机器学习和自然语言处理。",
                "日本語のテキスト",
            ]),
            json!({}),
        ),
        set(
            "我喜欢什么？",
            docs(&["我喜欢机器学习。", "他喜欢足球。", "今天天气很好。"]),
            json!({}),
        ),
        set(
            "  padded query \t\n",
            docs(&[
                "   padded document   ",
                "\u{1c}separated\u{1f}",
                "\u{a0}nbsp\u{3000}",
            ]),
            json!({}),
        ),
        set("", docs(&["An empty query.", ""]), json!({})),
        set("x", docs(&[""]), json!({})),
        set("topic 3", many.clone(), json!({})),
        set(
            "topic 3",
            many.clone(),
            json!({"batch_size": 16, "top_k": 10}),
        ),
        set("topic 5", many, json!({"batch_size": 64})),
        set(
            "SELECT 'x'' OR 1=1; --",
            docs(&["sql-ish text", "DROP TABLE students;"]),
            json!({"return_documents": false}),
        ),
        set(
            "same",
            docs(&["identical", "identical", "identical"]),
            json!({}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_order_and_token_ids_match_the_python_reference() {
    let sets = sets();
    let refs = reference(&sets);
    let engine = engine();
    let mut worst = 0f64;
    for (n, (set, r)) in sets.iter().zip(&refs).enumerate() {
        let ids = engine
            .rank_token_ids(RERANKER, &set.query, set.documents.clone())
            .await
            .expect("ids");
        assert_eq!(ids, r.ids, "set {n}: token ids differ from HF tokenizers");
        let rows = engine
            .rank(RERANKER, &set.query, set.documents.clone(), &set.kwargs)
            .await
            .expect("rank");
        let order: Vec<usize> = rows.iter().map(|d| d.corpus_id).collect();
        assert_eq!(order, r.order, "set {n}: order differs");
        for row in &rows {
            let want = f64::from(r.scores[row.corpus_id]);
            worst = worst.max((row.score - want).abs());
            assert!(
                (row.score - want).abs() <= 1e-4,
                "set {n} doc {}: {} vs {want}",
                row.corpus_id,
                row.score
            );
            let want_text = set.kwargs["return_documents"]
                .as_bool()
                .unwrap_or(false)
                .then(|| set.documents[row.corpus_id].clone());
            assert_eq!(row.text, want_text, "set {n}");
        }
    }
    eprintln!("largest score difference from the reference: {worst:e}");
    // The model tells matching pairs from others: a sanity check on the layout.
    let rows = engine
        .rank(
            RERANKER,
            "What is the capital of France?",
            sets[0].documents.clone(),
            &json!({}),
        )
        .await
        .unwrap();
    assert_ne!(rows[0].corpus_id, 1, "bananas ranked first: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_model_kinds_unknown_models_and_bad_kwargs_are_clear_errors() {
    let engine = engine();
    let err = engine
        .embed(RERANKER, vec!["text".into()], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42809", "{err}");
    assert!(err.to_string().contains("cross-encoder"), "{err}");
    assert!(err.to_string().contains("pgml.rank"), "{err}");

    let err = engine
        .rank(MODEL, "q", docs(&["d"]), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42809", "{err}");
    assert!(err.to_string().contains("not a cross-encoder"), "{err}");

    let err = engine
        .rank("no-such-org/no-such-model", "q", docs(&["d"]), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "58000", "{err}");

    let err = engine
        .rank(RERANKER, "q", docs(&["d"]), &json!({"topk": 1}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023", "{err}");
    assert!(err.to_string().contains("top_k"), "{err}");

    let err = engine
        .rank(RERANKER, "q", docs(&["d"]), &json!({"top_k": -1}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "22023", "{err}");

    let err = engine
        .rank(RERANKER, "q", vec!["x".repeat(5 << 20)], &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "54000", "{err}");

    let rows = engine
        .rank(RERANKER, "q", Vec::new(), &json!({}))
        .await
        .unwrap();
    assert!(rows.is_empty());

    // A two-label classifier is refused by rank (CrossEncoder.rank cannot sort its scores).
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let src = reranker_dir();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    std::fs::copy(
        src.join("onnx/model.onnx"),
        dir.path().join("onnx/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["DebertaV2ForSequenceClassification"],
            "id2label": {"0": "no", "1": "yes"}}"#,
    )
    .unwrap();
    let err = engine
        .rank(dir.path().to_str().unwrap(), "q", docs(&["d"]), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42809", "{err}");
    assert!(err.to_string().contains("2 labels"), "{err}");
}
