//! Resolves a `load_dataset` source to files on disk: a file or folder in the operator's dataset
//! directories (`local.rs`), or a Hugging Face dataset in the hub cache layout, downloaded only
//! when the operator enabled downloads (`hub.rs`). Client-sent names are checked here first.
//! Reading the files is not done here.

use std::path::{Path, PathBuf};

use pgml_engine::paths;

use super::{hub, local};
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
    pub(crate) fn of(path: &Path) -> Option<Format> {
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
    /// Local sources are read only from here and from `dataset_dirs`.
    pub datasets_dir: Option<PathBuf>,
    /// Further directories local sources may be read from (by a name below one of them, or by
    /// an absolute path inside one); symlinks must stay inside. Empty by default.
    pub dataset_dirs: Vec<PathBuf>,
    /// Download datasets missing from the hub cache; off unless the operator enables it
    /// (`offline` / HF_HUB_OFFLINE forbid it regardless).
    pub allow_downloads: bool,
    /// The Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub hub_cache: PathBuf,
    /// Never contact the hub (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Schema the table is created in (`pgml`).
    pub schema: String,
}

impl DatasetConfig {
    /// Reads the hub cache location and offline flag from the environment; no bundled datasets dir,
    /// no other dataset directories, no downloads.
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
            dataset_dirs: Vec::new(),
            allow_downloads: false,
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

    /// Adds a directory local sources may be read from.
    pub fn with_dataset_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dataset_dirs.push(dir.into());
        self
    }

    /// Enables (or disables) downloads from the Hugging Face Hub.
    pub fn with_downloads(mut self, allow: bool) -> Self {
        self.allow_downloads = allow;
        self
    }

    /// Every directory local sources may be read from.
    pub fn allowed_dirs(&self) -> Vec<PathBuf> {
        self.datasets_dir
            .iter()
            .chain(&self.dataset_dirs)
            .cloned()
            .collect()
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
            _ => {
                return Err(BulkError::InvalidArgument(
                    "load_dataset kwargs must be a JSON object".to_string(),
                ))
            }
        };
        for (key, value) in map {
            let key = paths::shown(key);
            let text = value
                .as_str()
                .ok_or_else(|| {
                    BulkError::InvalidArgument(format!("load_dataset kwarg {key} must be a string"))
                })
                .and_then(|text| name(&format!("kwarg {key}"), text));
            match key.as_str() {
                "split" => options.split = Some(text?),
                "revision" => options.revision = Some(text?),
                _ => {
                    return Err(BulkError::InvalidArgument(format!(
                        "load_dataset: unknown kwarg \"{key}\" (supported: split, revision)"
                    )))
                }
            }
        }
        Ok(options)
    }
}

/// A relative name (subset, split, revision) as it is joined into paths: 22023 otherwise.
fn name(what: &str, text: &str) -> Result<String, BulkError> {
    paths::relative_name(text)
        .map(|_| text.to_string())
        .map_err(|e| BulkError::InvalidArgument(format!("load_dataset {what}: {e}")))
}

/// Resolves `source` (and `subset`) to files: a file or folder in the allowed dataset
/// directories first, then the hub cache, then (only when downloads are enabled) the hub. The
/// table name is the last path component of the source (`org/name` -> `name`,
/// `dir/x.parquet` -> `x`).
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
    let path = paths::path_name(source).map_err(|e| {
        BulkError::InvalidArgument(format!(
            "load_dataset source: {e}; a source is a dataset name in the operator's dataset \
             directories or a Hugging Face dataset id (org/name)"
        ))
    })?;
    if let Some(subset) = subset {
        name("subset", subset)?;
    }
    let roots = config.allowed_dirs();
    if let Some(found) = local::resolve(source, path, subset.map(Path::new), options, &roots)? {
        return Ok(found);
    }
    let mut looked: Vec<String> = roots
        .iter()
        .map(|root| format!("{} (dataset directory)", root.join(path).display()))
        .collect();
    let subset_text = subset
        .map(|s| format!(", subset {s:?}"))
        .unwrap_or_default();
    if !hub::is_hub_id(source) {
        return Err(BulkError::DatasetNotFound(format!(
            "dataset {source:?}{subset_text} not found in the dataset directories the operator \
             allowed{}",
            missing_datasets_dir(config)
        )));
    }
    let table_name = source.rsplit('/').next().unwrap_or(source).to_string();
    let revision = options
        .revision
        .clone()
        .unwrap_or_else(|| "main".to_string());
    let repo_dir = hub::repo_dir(source, &revision, config);
    match hub::cached_snapshot(&repo_dir, &revision) {
        Some(snapshot) => {
            let files = hub::select_files(&snapshot, subset, options)?;
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

    if !config.allow_downloads {
        looked.push(
            "the Hugging Face Hub (skipped: downloads are disabled; an operator can enable them \
             with pgml-proxy --allow-downloads)"
                .to_string(),
        );
    } else if config.offline {
        looked.push("the Hugging Face Hub (skipped: HF_HUB_OFFLINE is set)".to_string());
    } else {
        match hub::download(source, subset, &revision, options, config) {
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
    }
    Err(BulkError::DatasetNotFound(format!(
        "dataset {source:?}{subset_text} not found. Looked in: {}. To supply it, put it (a \
         .parquet, .csv or .jsonl file, or a directory of them) into a dataset directory, or put \
         the dataset's parquet files into {}/snapshots/<revision>/{} with refs/{revision} \
         holding <revision>{}",
        looked.join("; "),
        repo_dir.display(),
        subset.map(|s| format!("{s}/")).unwrap_or_default(),
        missing_datasets_dir(config),
    )))
}

/// When the bundled datasets directory does not exist (a relative default read from another
/// working directory, a binary not set up): a sentence saying so and how to name it.
fn missing_datasets_dir(config: &DatasetConfig) -> String {
    match &config.datasets_dir {
        Some(dir) if !dir.is_dir() => format!(
            ". The bundled datasets directory {} does not exist: run `make setup` in the \
             pgml-proxy checkout (it records the checkout's datasets/ for the binary), or give \
             --datasets-dir / PGML_PROXY_DATASETS_DIR",
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
        ),
        _ => String::new(),
    }
}

/// Keeps files of the requested split.
pub(crate) fn filter_split(
    files: Vec<PathBuf>,
    root: &Path,
    options: &SourceOptions,
) -> Vec<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> DatasetConfig {
        DatasetConfig {
            datasets_dir: None,
            dataset_dirs: vec![dir.to_path_buf()],
            allow_downloads: false,
            hub_cache: dir.join("hub"),
            offline: false,
            schema: "pgml".into(),
        }
    }

    fn resolve_in(config: &DatasetConfig, source: &str) -> Result<ResolvedSource, BulkError> {
        resolve(source, None, &SourceOptions::default(), config)
    }

    #[test]
    fn client_named_paths_outside_the_dataset_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.csv"), dir.path().join("l.csv"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linked")).unwrap();
        let config = config(dir.path());
        let secret = outside.path().join("secret.csv");
        for source in [
            "/etc/passwd",
            "/etc",
            secret.to_str().unwrap(),
            "l.csv",
            "linked",
        ] {
            let err = resolve_in(&config, source).unwrap_err();
            assert_eq!(err.sqlstate(), "42501", "{source}: {err}");
            assert!(err.to_string().contains("outside"), "{err}");
        }
        for source in [
            "../../../../etc/passwd",
            "file:///etc/shadow",
            "https://example.com/x.parquet",
            "a/../../b",
            "./x.csv",
        ] {
            let err = resolve_in(&config, source).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{source}: {err}");
        }
    }

    #[test]
    fn files_in_a_dataset_dir_resolve_by_name_or_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("people")).unwrap();
        std::fs::write(dir.path().join("people/a.csv"), "a\n1\n").unwrap();
        let config = config(dir.path());
        let by_name = resolve_in(&config, "people").unwrap();
        assert_eq!(by_name.table_name, "people");
        assert_eq!(by_name.files.len(), 1);
        let absolute = dir.path().join("people/a.csv");
        let by_path = resolve_in(&config, absolute.to_str().unwrap()).unwrap();
        assert_eq!(by_path.table_name, "a");
        let err = resolve("people", Some("../.."), &SourceOptions::default(), &config).unwrap_err();
        assert_eq!(err.sqlstate(), "22023", "{err}");
    }

    #[test]
    fn a_symlink_inside_a_dataset_folder_cannot_pull_in_outside_files() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shadow.csv"), "a\n1\n").unwrap();
        std::fs::create_dir(dir.path().join("set")).unwrap();
        std::fs::write(dir.path().join("set/a.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("shadow.csv"),
            dir.path().join("set/b.csv"),
        )
        .unwrap();
        let err = resolve_in(&config(dir.path()), "set").unwrap_err();
        assert_eq!(err.sqlstate(), "42501", "{err}");
    }

    #[test]
    fn downloads_are_off_by_default_and_the_error_says_how_to_enable_them() {
        assert!(!DatasetConfig::from_env().allow_downloads);
        assert!(
            DatasetConfig::from_env()
                .with_downloads(true)
                .allow_downloads
        );
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_in(&config(dir.path()), "someone/some_set").unwrap_err();
        assert_eq!(err.sqlstate(), "58P01");
        let text = err.to_string();
        assert!(text.contains("downloads are disabled"), "{text}");
        assert!(text.contains("--allow-downloads"), "{text}");
        assert!(text.contains("datasets--someone--some_set"), "{text}");
    }

    #[test]
    fn a_missing_bundled_datasets_directory_is_named_with_its_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.datasets_dir = Some(dir.path().join("no-such-datasets"));
        let text = resolve_in(&config, "reviews_sample")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&format!(
                "bundled datasets directory {} does not exist",
                dir.path().join("no-such-datasets").display()
            )),
            "{text}"
        );
        assert!(text.contains("make setup"), "{text}");
        assert!(text.contains("--datasets-dir"), "{text}");
        config.datasets_dir = Some(dir.path().to_path_buf());
        let text = resolve_in(&config, "reviews_sample")
            .unwrap_err()
            .to_string();
        assert!(!text.contains("make setup"), "{text}");
    }

    #[test]
    fn kwargs_names_are_checked_and_not_echoed_in_full() {
        let err =
            SourceOptions::from_kwargs(&serde_json::json!({"revision": "../../x"})).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        let err = SourceOptions::from_kwargs(&serde_json::json!({ "k".repeat(100_000): "x" }))
            .unwrap_err();
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
        let err = SourceOptions::from_kwargs(&serde_json::json!(vec!["x"; 10_000])).unwrap_err();
        assert!(err.to_string().len() < 100);
        let long = "x".repeat(5000);
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_in(&config(dir.path()), &long).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
    }
}
