use super::cross_encoder::Activation;
use super::*;
use serde_json::{json, Value};

#[test]
fn parses_every_accepted_key() {
    let options = RankOptions::from_json(&json!({
        "top_k": 3, "return_documents": true, "batch_size": 8, "show_progress_bar": false,
        "num_workers": 0, "activation_fct": null, "apply_softmax": true,
        "convert_to_numpy": true, "convert_to_tensor": false
    }))
    .unwrap();
    assert_eq!(
        options,
        RankOptions {
            top_k: Some(3),
            return_documents: true,
            batch_size: 8
        }
    );
    assert_eq!(
        RankOptions::from_json(&json!({"top_k": null})).unwrap(),
        RankOptions::default()
    );
    assert_eq!(
        RankOptions::from_json(&Value::Null).unwrap(),
        RankOptions::default()
    );
    assert_eq!(
        RankOptions::from_json(&json!({"top_k": 0})).unwrap().top_k,
        Some(0)
    );
}

#[test]
fn unknown_keys_are_named_with_the_accepted_ones() {
    for key in ["topk", "device", "normalize_embeddings", "prompt"] {
        let err = RankOptions::from_json(&json!({ key: 1 })).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        let text = err.to_string();
        assert!(text.contains(&format!("\"{key}\"")), "{text}");
        assert!(
            text.contains("top_k, return_documents, batch_size"),
            "{text}"
        );
    }
}

#[test]
fn bad_values_name_the_key() {
    for (kwargs, key) in [
        (json!({"top_k": -1}), "top_k"),
        (json!({"top_k": 1.5}), "top_k"),
        (json!({"top_k": "3"}), "top_k"),
        (json!({"return_documents": "yes"}), "return_documents"),
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"batch_size": 100_000}), "batch_size"),
        (
            json!({"activation_fct": "torch.nn.Sigmoid"}),
            "activation_fct",
        ),
        (json!({"apply_softmax": 1}), "apply_softmax"),
        (json!({"num_workers": -2}), "num_workers"),
    ] {
        let err = RankOptions::from_json(&kwargs).unwrap_err();
        assert_eq!(err.sqlstate(), "22023", "{kwargs}");
        assert!(err.to_string().contains(key), "{err}");
    }
    let err = RankOptions::from_json(&json!([1, 2])).unwrap_err();
    assert_eq!(err.sqlstate(), "22023");
    let huge = RankOptions::from_json(&json!({"top_k": u64::MAX})).unwrap();
    assert_eq!(huge.top_k, Some(usize::MAX));
}

#[test]
fn order_is_descending_stable_and_cut_to_top_k() {
    let scores = [0.5f32, 0.9, 0.5, 0.1, 0.9];
    let ids = |r: Vec<(usize, f64)>| r.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(ids(order(&scores, None)), vec![1, 4, 0, 2, 3]);
    assert_eq!(ids(order(&scores, Some(2))), vec![1, 4]);
    assert_eq!(ids(order(&scores, Some(0))), Vec::<usize>::new());
    assert_eq!(ids(order(&scores, Some(99))).len(), 5);
    assert_eq!(order(&[], Some(3)), vec![]);
}

#[test]
fn strip_is_pythons() {
    assert_eq!(py_strip("  a b \t\n"), "a b");
    assert_eq!(py_strip("\u{1c}\u{1f}x\u{a0}\u{3000}\u{2029}"), "x");
    assert_eq!(py_strip("\u{200b}x"), "\u{200b}x");
    assert_eq!(py_strip(" \u{85} "), "");
}

#[test]
fn activations() {
    assert_eq!(
        Activation::from_name("torch.nn.modules.activation.Sigmoid"),
        Some(Activation::Sigmoid)
    );
    assert_eq!(
        Activation::from_name("torch.nn.modules.linear.Identity"),
        Some(Activation::Identity)
    );
    assert_eq!(
        Activation::from_name("torch.nn.modules.activation.ReLU"),
        None
    );
    assert!((Activation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
    assert_eq!(Activation::Identity.apply(-3.5), -3.5);
}
