//! Hugging Face datasets in the hub cache layout (`datasets--org--name/snapshots/<rev>/...`),
//! and their download with hf-hub, which only happens when the operator enabled downloads.
//! Every file found must resolve inside the dataset's cache folder (snapshots link to blobs).

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};
use pgml_engine::paths;
use tracing::info;

use super::local::list_files;
use super::source::{filter_split, DatasetConfig, Format, SourceOptions};
use crate::error::BulkError;

/// A Hugging Face dataset id: `name` or `org/name`, letters, digits, `-`, `_`, `.`, no `..`.
pub(crate) fn is_hub_id(source: &str) -> bool {
    let parts: Vec<&str> = source.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 96
                && !part.contains("..")
                && !part.starts_with(['-', '.'])
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The cache folder of dataset `source` (`datasets--org--name`).
pub(crate) fn repo_dir(source: &str, revision: &str, config: &DatasetConfig) -> PathBuf {
    let repo = Repo::with_revision(source.to_string(), RepoType::Dataset, revision.to_string());
    config.hub_cache.join(repo.folder_name())
}

/// The snapshot directory for `revision`: from `refs/<revision>`, or the revision itself when it
/// is a commit hash that is present, or the only snapshot when there is exactly one.
pub(crate) fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let dir = snapshots.join(hash.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    let direct = snapshots.join(revision);
    if direct.is_dir() {
        return Some(direct);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    (entries.len() == 1).then(|| entries.remove(0))
}

/// Parquet files of a snapshot for a subset (`<subset>/` or `data/<subset>/`; everything when
/// no subset), filtered by split.
pub(crate) fn select_files(
    snapshot: &Path,
    subset: Option<&str>,
    options: &SourceOptions,
) -> Result<Vec<PathBuf>, BulkError> {
    let roots: Vec<PathBuf> = match subset {
        Some(s) => vec![snapshot.join(s), snapshot.join("data").join(s)],
        None => vec![snapshot.to_path_buf()],
    };
    let repo_dir = snapshot
        .parent()
        .and_then(Path::parent)
        .unwrap_or(snapshot)
        .to_path_buf();
    for root in roots.into_iter().filter(|r| r.is_dir()) {
        let files: Vec<PathBuf> = list_files(&root, std::slice::from_ref(&repo_dir))?
            .into_iter()
            .filter(|p| Format::of(p) == Some(Format::Parquet))
            .collect();
        let files = filter_split(files, &root, options);
        if !files.is_empty() {
            return Ok(files);
        }
    }
    Ok(Vec::new())
}

/// Downloads the parquet files of a dataset (subset) into the hub cache with hf-hub.
pub(crate) fn download(
    source: &str,
    subset: Option<&str>,
    revision: &str,
    options: &SourceOptions,
    config: &DatasetConfig,
) -> Result<Vec<PathBuf>, BulkError> {
    let failed = |message: String| BulkError::Download {
        dataset: source.to_string(),
        message,
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(config.hub_cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        source.to_string(),
        RepoType::Dataset,
        revision.to_string(),
    ));
    let info = repo.info().map_err(|e| failed(e.to_string()))?;
    let wanted: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|name| name.ends_with(".parquet"))
        // hf-hub joins the name into the cache: names that could leave it are skipped.
        .filter(|name| paths::relative_name(name).is_ok())
        .filter(|name| match subset {
            Some(s) => {
                name.starts_with(&format!("{s}/")) || name.starts_with(&format!("data/{s}/"))
            }
            None => true,
        })
        .collect();
    if wanted.len() > super::local::MAX_FILES {
        return Err(BulkError::LimitExceeded(format!(
            "dataset {source:?} has {} parquet files; at most {} are loaded",
            wanted.len(),
            super::local::MAX_FILES
        )));
    }
    let mut files = Vec::new();
    for name in wanted {
        info!(dataset = source, file = %name, "downloading");
        files.push(repo.get(&name).map_err(|e| failed(e.to_string()))?);
    }
    files.sort();
    let root = files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(filter_split(files, &root, options))
}
