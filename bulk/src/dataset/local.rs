//! Local dataset files, only from the directories the operator configured: a source names a
//! file or folder below one of them (or is an absolute path inside one); symlinks are followed
//! and must stay inside. Nothing else on the machine can be read through `load_dataset`.

use std::path::{Path, PathBuf};

use pgml_engine::paths::{self, PathError};

use super::source::{filter_split, Format, ResolvedSource, SourceOptions};
use crate::error::BulkError;

/// Most files one dataset may have.
pub(crate) const MAX_FILES: usize = 10_000;
/// Deepest folder nesting searched below a dataset's folder (also ends symlink loops).
const MAX_DEPTH: usize = 16;

/// 42501 for a path outside the allowed directories.
fn refused(source: &str) -> BulkError {
    BulkError::PermissionDenied(format!(
        "load_dataset: \"{}\" is outside the dataset directories the operator allowed; name a \
         dataset in those directories or a Hugging Face dataset id",
        paths::shown(source)
    ))
}

fn confined(path: &Path, roots: &[PathBuf], source: &str) -> Result<PathBuf, BulkError> {
    paths::confine(path, roots).map_err(|e| match e {
        PathError::Outside(_) => refused(source),
        PathError::Malformed(m) => BulkError::InvalidArgument(m),
    })
}

/// Resolves `name` (already checked by `paths::path_name`) in the allowed directories: None when
/// it is relative and none of them holds it (the caller tries the hub cache next).
pub(crate) fn resolve(
    source: &str,
    name: &Path,
    subset: Option<&Path>,
    options: &SourceOptions,
    roots: &[PathBuf],
) -> Result<Option<ResolvedSource>, BulkError> {
    let found = if name.is_absolute() {
        // Decided by name first, so a refusal says nothing about what exists elsewhere.
        let below = roots.iter().any(|root| {
            name.starts_with(root) || root.canonicalize().is_ok_and(|r| name.starts_with(r))
        });
        if !below {
            return Err(refused(source));
        }
        if !name.exists() {
            return Err(BulkError::DatasetNotFound(format!(
                "{} does not exist",
                name.display()
            )));
        }
        name.to_path_buf()
    } else {
        match roots
            .iter()
            .map(|root| root.join(name))
            .find(|p| p.exists())
        {
            Some(path) => path,
            None => return Ok(None),
        }
    };
    let real = confined(&found, roots, source)?;
    let table_name = if real.is_dir() {
        found.file_name()
    } else {
        found.file_stem()
    }
    .and_then(|s| s.to_str())
    .unwrap_or(source)
    .to_string();
    let base = match subset {
        Some(subset) if real.is_dir() => real.join(subset),
        _ => real,
    };
    from_path(&base, options, table_name, roots, source).map(Some)
}

fn from_path(
    base: &Path,
    options: &SourceOptions,
    table_name: String,
    roots: &[PathBuf],
    source: &str,
) -> Result<ResolvedSource, BulkError> {
    let files: Vec<PathBuf> = if base.is_dir() {
        let all = list_files(base, roots)?
            .into_iter()
            .filter(|p| Format::of(p).is_some())
            .collect();
        filter_split(all, base, options)
    } else if base.exists() {
        // The path itself is read (a hub-style link keeps the extension its target lacks).
        confined(base, roots, source)?;
        vec![base.to_path_buf()]
    } else {
        return Err(BulkError::DatasetNotFound(format!(
            "{} does not exist",
            base.display()
        )));
    };
    let Some(first) = files.first() else {
        return Err(BulkError::DatasetNotFound(format!(
            "{} holds no .parquet, .csv or .jsonl files",
            base.display()
        )));
    };
    let format = Format::of(first).ok_or_else(|| {
        BulkError::InvalidArgument(format!(
            "{}: unsupported file type (use .parquet, .csv or .jsonl)",
            first.display()
        ))
    })?;
    if let Some(other) = files.iter().find(|p| Format::of(p) != Some(format)) {
        return Err(BulkError::InvalidArgument(format!(
            "{} mixes file formats ({} and {})",
            base.display(),
            first.display(),
            other.display()
        )));
    }
    Ok(ResolvedSource {
        files,
        format,
        table_name,
    })
}

/// All files under `dir`, recursively, sorted by path so the row order is stable; each must
/// resolve inside `roots` (42501 otherwise). At most `MAX_FILES` files, `MAX_DEPTH` levels.
pub(crate) fn list_files(dir: &Path, roots: &[PathBuf]) -> Result<Vec<PathBuf>, BulkError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((current, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| BulkError::io(&current, e))?;
        for entry in entries {
            let path = entry.map_err(|e| BulkError::io(&current, e))?.path();
            let shown = path.display().to_string();
            let real = confined(&path, roots, &shown)?;
            if real.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    return Err(BulkError::LimitExceeded(format!(
                        "{} is nested more than {MAX_DEPTH} folders deep",
                        dir.display()
                    )));
                }
                stack.push((path, depth + 1));
            } else {
                if out.len() >= MAX_FILES {
                    return Err(BulkError::LimitExceeded(format!(
                        "{} holds more than {MAX_FILES} files",
                        dir.display()
                    )));
                }
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
