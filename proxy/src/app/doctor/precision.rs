//! `doctor`'s precision line of each model: fp32 or int8 under the `--int8` settings, the
//! int8 file's recorded fidelity, and whether the guard refuses it (a refused model that
//! `--int8` names without `--int8-fallback` fails every call: a problem doctor counts).

use std::path::Path;

use crate::app::args::PrecisionArgs;

/// What `model` computes in under these settings, said for a person, and whether that is a
/// problem (int8 asked for by name, refused by the guard, no fallback: every call fails).
pub(super) fn precision(hub: &Path, model: &str, args: &PrecisionArgs) -> (String, bool) {
    let named = args.int8.iter().any(|m| m == model);
    let wanted = named || args.int8.iter().any(|m| m == "*");
    let floor = args.int8_min_cosine;
    let status = pgml_engine::int8_status(hub, model, floor);
    let refusal = match &status {
        None => "no int8 file".to_string(),
        Some(Ok(_)) => String::new(),
        Some(Err(pgml_engine::EngineError::PrecisionRefused { reason, .. })) => reason.clone(),
        Some(Err(e)) => e.to_string(),
    };
    match (wanted, status) {
        (true, Some(Ok(record))) => (format!("int8 ({record}; floor {floor})"), false),
        (true, _) if args.int8_fallback => (
            format!("fp32 (int8 refused, fallback on: {refusal})"),
            false,
        ),
        (true, _) => (format!("int8 REFUSED: {refusal}"), named),
        (false, Some(Ok(record))) => (
            format!(
                "fp32 (int8 available with {record}: --int8 {model} or kwargs \
                 {{\"precision\": \"int8\"}})"
            ),
            false,
        ),
        (false, None) => ("fp32".to_string(), false),
        (false, Some(Err(_))) => (format!("fp32 (its int8 file is refused: {refusal})"), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub cache with model `o/m` whose int8 file has a record with `min` as its minimum.
    fn hub_with_int8(min: f64) -> tempfile::TempDir {
        let hub = tempfile::tempdir().expect("tempdir");
        let repo = hub.path().join("models--o--m");
        let snapshot = repo.join("snapshots/abc");
        std::fs::create_dir_all(snapshot.join("onnx")).expect("mkdir");
        std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
        std::fs::write(repo.join("refs/main"), "abc").expect("ref");
        std::fs::write(snapshot.join("tokenizer.json"), "{}").expect("tokenizer");
        std::fs::write(snapshot.join("onnx/model_int8.onnx"), "onnx").expect("onnx");
        let record = format!(r#"{{"min_cosine": {min}, "mean_cosine": 0.999, "texts": 400}}"#);
        std::fs::write(snapshot.join("onnx/model_int8.fidelity.json"), record).expect("record");
        hub
    }

    fn args(int8: &[&str], fallback: bool) -> PrecisionArgs {
        PrecisionArgs {
            int8: int8.iter().map(|m| m.to_string()).collect(),
            int8_min_cosine: pgml_engine::DEFAULT_INT8_MIN_COSINE,
            int8_fallback: fallback,
        }
    }

    #[test]
    fn each_model_says_which_precision_it_computes_in() {
        let good = hub_with_int8(0.995);
        let (text, problem) = precision(good.path(), "o/m", &args(&[], false));
        assert!(text.starts_with("fp32 (int8 available"), "{text}");
        assert!(!problem);
        let (text, problem) = precision(good.path(), "o/m", &args(&["o/m"], false));
        assert!(
            text.starts_with("int8 (cosine against fp32 min 0.9950"),
            "{text}"
        );
        assert!(!problem);
        let low = hub_with_int8(0.95);
        let (text, problem) = precision(low.path(), "o/m", &args(&["o/m"], false));
        assert!(text.starts_with("int8 REFUSED"), "{text}");
        assert!(text.contains("below the floor 0.99"), "{text}");
        assert!(problem, "named, refused and no fallback: its calls fail");
        let (text, problem) = precision(low.path(), "o/m", &args(&["*"], true));
        assert!(
            text.starts_with("fp32 (int8 refused, fallback on"),
            "{text}"
        );
        assert!(!problem);
        let (text, problem) = precision(low.path(), "other/model", &args(&["*"], false));
        assert_eq!(text, "int8 REFUSED: no int8 file");
        assert!(!problem, "`*` names no model in particular");
    }
}
