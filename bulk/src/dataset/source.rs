//! Resolves a `load_dataset` source to files on disk: a local path, a bundled dataset from the
//! datasets directory, or a Hugging Face dataset in the hub cache layout (offline first, then the
//! hub when allowed). Reading the files is not done here.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};
use tracing::info;

use crate::error::BulkError;

/// A file format this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// JSON lines (one object per line).
    JsonLines,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// Where datasets are looked for.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    /// Directory of bundled datasets (`datasets/` in the repo), each a folder named like the dataset.
    pub datasets_dir: Option<PathBuf>,
    /// The Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub hub_cache: PathBuf,
    /// Never contact the hub (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Schema the table is created in (`pgml`).
    pub schema: String,
}

impl DatasetConfig {
    /// Reads the hub cache location and offline flag from the environment; no bundled datasets dir.
    pub fn from_env() -> Self {
        let hub_cache = if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = std::env::var_os("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache").join("huggingface").join("hub")
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
            .unwrap_or(false);
        DatasetConfig {
            datasets_dir: None,
            hub_cache,
            offline,
            schema: "pgml".to_string(),
        }
    }

    /// Sets the bundled datasets directory.
    pub fn with_datasets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.datasets_dir = Some(dir.into());
        self
    }
}

/// What a source resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedSource {
    /// Files to read, in order.
    pub files: Vec<PathBuf>,
    /// Their common format.
    pub format: Format,
    /// The table name the data is loaded into (without schema).
    pub table_name: String,
}

/// Options taken from `load_dataset`'s kwargs.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Only files of this split (`train`, `test`, ...).
    pub split: Option<String>,
    /// Hub revision (branch, tag or commit), `main` by default.
    pub revision: Option<String>,
}

impl SourceOptions {
    /// Parses kwargs; unknown keys are an error (22023).
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, BulkError> {
        let mut options = SourceOptions::default();
        let map = match kwargs {
            serde_json::Value::Null => return Ok(options),
            serde_json::Value::Object(map) => map,
            other => {
                return Err(BulkError::InvalidArgument(format!(
                    "load_dataset kwargs must be a JSON object, got {other}"
                )))
            }
        };
        for (key, value) in map {
            let text = value.as_str().map(str::to_string).ok_or_else(|| {
                BulkError::InvalidArgument(format!("load_dataset kwarg {key} must be a string"))
            });
            match key.as_str() {
                "split" => options.split = Some(text?),
                "revision" => options.revision = Some(text?),
                _ => {
                    return Err(BulkError::InvalidArgument(format!(
                        "load_dataset: unknown kwarg {key:?} (supported: split, revision)"
                    )))
                }
            }
        }
        Ok(options)
    }
}

/// Resolves `source` (and `subset`) to files: a local path first, then a bundled dataset, then
/// the hub cache, then (unless offline) a download. The table name is the last path component of
/// the source (`org/name` -> `name`, `/data/x.parquet` -> `x`).
pub fn resolve(
    source: &str,
    subset: Option<&str>,
    options: &SourceOptions,
    config: &DatasetConfig,
) -> Result<ResolvedSource, BulkError> {
    if source.trim().is_empty() {
        return Err(BulkError::InvalidArgument(
            "load_dataset: source is empty".into(),
        ));
    }
    let mut looked = Vec::new();
    let local = Path::new(source);
    if local.exists() {
        let table_name = local
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(source)
            .to_string();
        let base = match subset {
            Some(subset) if local.is_dir() => local.join(subset),
            _ => local.to_path_buf(),
        };
        return from_path(&base, options, table_name);
    }
    looked.push(format!("{} (as a local path)", local.display()));

    let table_name = source.rsplit('/').next().unwrap_or(source).to_string();
    if let Some(dir) = &config.datasets_dir {
        let bundled = dir.join(source);
        if bundled.is_dir() {
            let base = subset.map_or(bundled.clone(), |s| bundled.join(s));
            return from_path(&base, options, table_name);
        }
        looked.push(format!("{} (bundled datasets)", bundled.display()));
    }

    let revision = options
        .revision
        .clone()
        .unwrap_or_else(|| "main".to_string());
    let repo = Repo::with_revision(source.to_string(), RepoType::Dataset, revision.clone());
    let repo_dir = config.hub_cache.join(repo.folder_name());
    match cached_snapshot(&repo_dir, &revision) {
        Some(snapshot) => {
            let files = select_files(&snapshot, subset, options)?;
            if !files.is_empty() {
                return Ok(ResolvedSource {
                    files,
                    format: Format::Parquet,
                    table_name,
                });
            }
            looked.push(format!(
                "{} (hub cache snapshot: no parquet files{})",
                snapshot.display(),
                subset
                    .map(|s| format!(" for subset {s:?}"))
                    .unwrap_or_default()
            ));
        }
        None => looked.push(format!(
            "{} (hub cache, revision {revision})",
            repo_dir.display()
        )),
    }

    if !config.offline {
        match download(source, subset, &revision, options, config) {
            Ok(files) if !files.is_empty() => {
                return Ok(ResolvedSource {
                    files,
                    format: Format::Parquet,
                    table_name,
                })
            }
            Ok(_) => looked.push(format!(
                "the Hugging Face Hub: {source} has no parquet files"
            )),
            Err(e) => looked.push(format!("the Hugging Face Hub: {e}")),
        }
    } else {
        looked.push("the Hugging Face Hub (skipped: HF_HUB_OFFLINE is set)".to_string());
    }

    let subset_text = subset
        .map(|s| format!(", subset {s:?}"))
        .unwrap_or_default();
    Err(BulkError::DatasetNotFound(format!(
        "dataset {source:?}{subset_text} not found. Looked in: {}. To supply it, pass a local path \
         (a .parquet, .csv or .jsonl file, or a directory of them) as the source, or put the \
         dataset's parquet files into {}/snapshots/<revision>/{} with refs/{revision} holding \
         <revision>",
        looked.join("; "),
        repo_dir.display(),
        subset.map(|s| format!("{s}/")).unwrap_or_default(),
    )))
}

/// The snapshot directory for `revision`: from `refs/<revision>`, or the revision itself when it
/// is a commit hash that is present, or the only snapshot when there is exactly one.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
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
fn select_files(
    snapshot: &Path,
    subset: Option<&str>,
    options: &SourceOptions,
) -> Result<Vec<PathBuf>, BulkError> {
    let roots: Vec<PathBuf> = match subset {
        Some(s) => vec![snapshot.join(s), snapshot.join("data").join(s)],
        None => vec![snapshot.to_path_buf()],
    };
    for root in roots.into_iter().filter(|r| r.is_dir()) {
        let files: Vec<PathBuf> = list_files(&root)?
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

/// Keeps files of the requested split.
fn filter_split(files: Vec<PathBuf>, root: &Path, options: &SourceOptions) -> Vec<PathBuf> {
    files
        .into_iter()
        .filter(|path| split_matches(path, root, options))
        .collect()
}

/// Whether `path` (below `root`) belongs to the requested split: a path component equal to it or
/// a file name starting with `<split>-` / `<split>.`. No split requested: every file.
pub(crate) fn split_matches(path: &Path, root: &Path, options: &SourceOptions) -> bool {
    let Some(split) = &options.split else {
        return true;
    };
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .any(|c| {
            let part = c.as_os_str().to_string_lossy();
            part == split.as_str()
                || part.starts_with(&format!("{split}-"))
                || part.starts_with(&format!("{split}."))
        })
}

fn from_path(
    base: &Path,
    options: &SourceOptions,
    table_name: String,
) -> Result<ResolvedSource, BulkError> {
    let files: Vec<PathBuf> = if base.is_dir() {
        let all = list_files(base)?
            .into_iter()
            .filter(|p| Format::of(p).is_some())
            .collect();
        filter_split(all, base, options)
    } else if base.exists() {
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

/// All files under `dir`, recursively, sorted by path so the row order is stable.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>, BulkError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| BulkError::io(&current, e))?;
        for entry in entries {
            let path = entry.map_err(|e| BulkError::io(&current, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Downloads the parquet files of a dataset (subset) into the hub cache with hf-hub.
fn download(
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
        .filter(|name| match subset {
            Some(s) => {
                name.starts_with(&format!("{s}/")) || name.starts_with(&format!("data/{s}/"))
            }
            None => true,
        })
        .collect();
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
