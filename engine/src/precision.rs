//! Precision: whether a model computes in fp32 (its ordinary ONNX file) or in int8 (a
//! quantized file that ships with its measured fidelity), and the guard that refuses an int8
//! file whose recorded fidelity is below the operator's floor. Knows file names and records,
//! not sessions: `registry.rs` applies the guard before a model loads.

use std::path::Path;

use serde::Deserialize;

use crate::error::EngineError;
use crate::resolve::ModelFiles;

/// The int8 weights looked for when kwargs name no file (the name transformers.js repos use).
pub const INT8_FILE: &str = "onnx/model_int8.onnx";
/// Default floor: the least minimum cosine against fp32 an int8 file may have recorded.
pub const DEFAULT_INT8_MIN_COSINE: f64 = 0.99;

/// What a model computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The model's ordinary ONNX file (weight-only quantized files compute in fp32 too).
    #[default]
    Fp32,
    /// A quantized file (`onnx/model_int8.onnx`) whose MatMuls compute in int8, admitted only
    /// with a fidelity record at or above the floor.
    Int8,
}

impl Precision {
    /// Parses `int8`, `fp32` (also `float32`, as sentence-transformers spells it).
    pub fn parse(text: &str) -> Result<Precision, EngineError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            _ => Err(EngineError::bad(
                "precision",
                format!("\"{}\" is not one of int8, fp32", crate::paths::shown(text)),
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        })
    }
}

/// The fidelity record laid next to a quantized ONNX file (`X.onnx` -> `X.fidelity.json`):
/// its embeddings' cosine against the fp32 model's on held-out texts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Fidelity {
    /// The smallest cosine over the held-out texts.
    pub min_cosine: f64,
    /// The mean cosine over the held-out texts.
    pub mean_cosine: f64,
    /// How many held-out texts were measured.
    pub texts: usize,
}

impl Fidelity {
    /// Reads and checks a record (cosines in [-1, 1], at least one text).
    pub fn read(path: &Path) -> Result<Fidelity, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let record: Fidelity =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let cosine = |c: f64| c.is_finite() && (-1.0..=1.0 + 1e-6).contains(&c);
        if !cosine(record.min_cosine) || !cosine(record.mean_cosine) || record.texts == 0 {
            return Err(format!(
                "{}: min_cosine and mean_cosine must be cosines and texts positive",
                path.display()
            ));
        }
        Ok(record)
    }
}

impl std::fmt::Display for Fidelity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cosine against fp32 min {:.4}, mean {:.4} on {} held-out texts",
            self.min_cosine, self.mean_cosine, self.texts
        )
    }
}

/// The fidelity record's name for an ONNX file name (`onnx/model_int8.onnx` ->
/// `onnx/model_int8.fidelity.json`).
pub fn fidelity_name(onnx: &str) -> String {
    let stem = onnx.strip_suffix(".onnx").unwrap_or(onnx);
    format!("{stem}.fidelity.json")
}

/// The guard: `files` may run in `precision` when it is fp32, or when its fidelity record
/// exists, reads, and its minimum cosine is at least `floor`. Returns the record of an
/// admitted int8 file.
pub fn admit(
    model: &str,
    precision: Precision,
    files: &ModelFiles,
    floor: f64,
) -> Result<Option<Fidelity>, EngineError> {
    if precision == Precision::Fp32 {
        return Ok(None);
    }
    let refuse = |reason: String| EngineError::PrecisionRefused {
        model: model.to_string(),
        reason,
    };
    let Some(path) = &files.fidelity else {
        return Err(refuse(format!(
            "{} has no fidelity record ({} next to it, written by the quantizer with the \
             measured cosine against fp32), so its accuracy is unknown",
            files.onnx.display(),
            fidelity_name("X.onnx")
        )));
    };
    let record = Fidelity::read(path).map_err(|e| EngineError::ModelLoad {
        model: model.to_string(),
        path: path.to_path_buf(),
        reason: format!("unreadable fidelity record: {e}"),
    })?;
    if record.min_cosine < floor {
        return Err(refuse(format!(
            "its int8 file's recorded {record}: the minimum is below the floor {floor} \
             (--int8-min-cosine)"
        )));
    }
    Ok(Some(record))
}

/// What int8 offers for `model` in the hub cache at `hub_dir` (offline): None when it has no
/// int8 file, else the guard's answer at `floor` (the admitted record, or why it is refused).
/// For `pgml-proxy doctor`.
pub fn int8_status(
    hub_dir: &Path,
    model: &str,
    floor: f64,
) -> Option<Result<Fidelity, EngineError>> {
    let resolver = crate::resolve::Resolver::new(hub_dir.to_path_buf(), false);
    let files = resolver.resolve(model, None, Some(INT8_FILE)).ok()?;
    Some(
        admit(model, Precision::Int8, &files, floor).and_then(|record| {
            record.ok_or_else(|| EngineError::PrecisionRefused {
                model: model.to_string(),
                reason: "no fidelity record".to_string(),
            })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_parse_and_others_are_refused() {
        assert_eq!(Precision::parse("int8").unwrap(), Precision::Int8);
        assert_eq!(Precision::parse("FP32").unwrap(), Precision::Fp32);
        assert_eq!(Precision::parse("float32").unwrap(), Precision::Fp32);
        for bad in ["int4", "fp16", ""] {
            let err = Precision::parse(bad).unwrap_err();
            assert_eq!(err.sqlstate(), "22023");
            assert!(err.to_string().contains("precision"), "{err}");
        }
    }

    #[test]
    fn fidelity_record_sits_next_to_its_onnx_file() {
        assert_eq!(
            fidelity_name("onnx/model_int8.onnx"),
            "onnx/model_int8.fidelity.json"
        );
        assert_eq!(fidelity_name("weights"), "weights.fidelity.json");
    }

    #[test]
    fn records_with_impossible_values_are_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        for bad in [
            r#"{"min_cosine": 1.5, "mean_cosine": 0.9, "texts": 3}"#,
            r#"{"min_cosine": 0.9, "mean_cosine": 0.9, "texts": 0}"#,
            r#"{"min_cosine": 0.9}"#,
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(Fidelity::read(&path).is_err(), "{bad}");
        }
        std::fs::write(
            &path,
            r#"{"min_cosine": 0.995, "mean_cosine": 0.999, "texts": 2000, "other": 1}"#,
        )
        .unwrap();
        assert_eq!(Fidelity::read(&path).unwrap().texts, 2000);
    }
}
