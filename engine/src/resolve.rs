//! Model resolution: a Hugging Face repo id in the hub cache layout (offline first; downloads
//! through hf-hub only when the operator enabled them) or a directory inside the operator's
//! allowed model directories. Every file found is checked to lie inside its repository or
//! directory (symlinks followed). Returns file paths only: parsing them is `model_config.rs`'s
//! job, loading them `model.rs`'s.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::EngineError;
use crate::kwargs;
use crate::paths::{self, PathError};

/// ONNX weights looked for when kwargs do not name a file, in order.
pub(crate) const ONNX_CANDIDATES: [&str; 5] = [
    "onnx/model.onnx",
    "model.onnx",
    "onnx/model_quantized.onnx",
    "onnx/model_qint8_avx512.onnx",
    "onnx/model_quint8_avx2.onnx",
];

/// The files of one model that the engine reads; optional ones may be absent.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub sentence_bert_config: Option<PathBuf>,
    pub sentence_transformers_config: Option<PathBuf>,
    /// Directory holding the pooling module's config.json (from modules.json).
    pub pooling_config: Option<PathBuf>,
}

/// Where models are looked up.
#[derive(Debug, Clone)]
pub struct Resolver {
    hub_dir: PathBuf,
    allow_download: bool,
    /// Why downloads are off although the operator allowed them (HF_HUB_OFFLINE).
    offline_env: bool,
    model_dirs: Vec<PathBuf>,
}

/// The hub cache directory the environment points to, as huggingface_hub computes it.
pub fn hub_dir_from_env() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".cache").join("huggingface").join("hub")
}

fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// One place files can come from (one per resolution, so variant size does not matter).
#[allow(clippy::large_enum_variant)]
enum Source {
    /// A model directory; its files may link anywhere inside the allowed model directories
    /// (a copied hub snapshot links into its blobs).
    Dir { dir: PathBuf, roots: Vec<PathBuf> },
    Hub {
        /// The repository's folder in the cache: every file must resolve inside it.
        repo_dir: PathBuf,
        cache: Cache,
        repo: Repo,
        snapshot: Option<PathBuf>,
        api: Option<hf_hub::api::sync::ApiRepo>,
    },
}

impl Resolver {
    /// A resolver over `hub_dir`; downloads only if `allow_download` and HF_HUB_OFFLINE is unset.
    pub fn new(hub_dir: PathBuf, allow_download: bool) -> Self {
        let offline_env = offline_from_env();
        Resolver {
            hub_dir,
            allow_download: allow_download && !offline_env,
            offline_env: allow_download && offline_env,
            model_dirs: Vec::new(),
        }
    }

    /// Also resolves models in these directories (by absolute path or by a name below one).
    pub fn with_model_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.model_dirs = dirs;
        self
    }

    /// Finds the files of `model` (a directory or a repo id) at `revision`.
    pub fn resolve(
        &self,
        model: &str,
        revision: Option<&str>,
        file_name: Option<&str>,
    ) -> Result<ModelFiles, EngineError> {
        let mut download_error = None;
        let source = self.source(model, revision)?;
        let revision = revision.unwrap_or("main");
        let onnx_names: Vec<&str> = match file_name {
            Some(name) => vec![name],
            None => ONNX_CANDIDATES.to_vec(),
        };
        let mut onnx = None;
        for name in &onnx_names {
            onnx = source.fetch(name, &mut download_error)?;
            if onnx.is_some() {
                break;
            }
        }
        let Some(onnx) = onnx else {
            let missing = match file_name {
                Some(name) => format!("no {name}"),
                None => "no ONNX weights".to_string(),
            };
            return Err(self.not_found(
                model,
                revision,
                &source,
                &missing,
                &onnx_names,
                download_error,
            ));
        };
        let Some(tokenizer) = source.fetch("tokenizer.json", &mut download_error)? else {
            return Err(self.not_found(
                model,
                revision,
                &source,
                "no tokenizer.json",
                &onnx_names,
                download_error,
            ));
        };
        let mut ignored = None;
        let mut optional = |name: &str| source.fetch(name, &mut ignored);
        let modules = optional("modules.json")?;
        let pooling_dir = modules
            .as_deref()
            .and_then(|path| pooling_dir_from_modules(path).ok().flatten())
            .unwrap_or_else(|| "1_Pooling".to_string());
        // An empty module path means the model's root, as sentence-transformers joins it.
        let pooling_file = match pooling_dir.trim_end_matches('/') {
            "" => "config.json".to_string(),
            dir => format!("{dir}/config.json"),
        };
        Ok(ModelFiles {
            onnx,
            tokenizer,
            tokenizer_config: optional("tokenizer_config.json")?,
            config: optional("config.json")?,
            modules,
            sentence_bert_config: optional("sentence_bert_config.json")?,
            sentence_transformers_config: optional("config_sentence_transformers.json")?,
            pooling_config: optional(&pooling_file)?,
        })
    }

    /// Where `model` comes from: an allowed local directory or the hub cache. A client can
    /// name no other directory: absolute paths must lie inside an allowed model directory,
    /// relative names are hub ids unless one of those directories holds them.
    fn source(&self, model: &str, revision: Option<&str>) -> Result<Source, EngineError> {
        let invalid = |e: PathError| EngineError::InvalidName {
            what: "model",
            reason: format!(
                "{e}: a model is a Hugging Face id (owner/name) or a directory the operator \
                 allowed"
            ),
        };
        let path = paths::path_name(model).map_err(invalid)?;
        if path.is_absolute() {
            let dir = self.local_dir(model, path)?;
            return Ok(self.dir_source(dir));
        }
        for dir in &self.model_dirs {
            let candidate = dir.join(path);
            if candidate.is_dir() {
                let real = paths::confine(&candidate, &self.model_dirs)
                    .map_err(|e| EngineError::NotAllowed(format!("model \"{model}\": {e}")))?;
                return Ok(self.dir_source(real));
            }
        }
        hub_id(model).map_err(invalid)?;
        if let Some(revision) = revision {
            kwargs::revision(revision)?;
        }
        let revision = revision.unwrap_or("main").to_string();
        let repo = Repo::with_revision(model.to_string(), RepoType::Model, revision.clone());
        let cache = Cache::new(self.hub_dir.clone());
        // hf-hub follows refs/<revision>; a commit hash has no ref but its own snapshot dir.
        let repo_dir = self.hub_dir.join(repo.folder_name());
        let snapshot = repo_dir.join("snapshots").join(&revision);
        let snapshot = snapshot.is_dir().then_some(snapshot);
        let api = if self.allow_download {
            self.api(&cache, &repo)
        } else {
            None
        };
        Ok(Source::Hub {
            repo_dir,
            cache,
            repo,
            snapshot,
            api,
        })
    }

    fn dir_source(&self, dir: PathBuf) -> Source {
        Source::Dir {
            dir,
            roots: self.model_dirs.clone(),
        }
    }

    /// An absolute model directory, allowed only inside the operator's model directories.
    /// Checked by name before the filesystem is touched, so a refusal says nothing about
    /// whether the path exists.
    fn local_dir(&self, model: &str, path: &Path) -> Result<PathBuf, EngineError> {
        if self.model_dirs.is_empty() {
            return Err(EngineError::NotAllowed(format!(
                "model \"{}\": loading models from local directories is disabled; name a \
                 Hugging Face model id (owner/name), or an operator can allow directories \
                 (pgml-proxy --model-dir)",
                paths::shown(model)
            )));
        }
        let outside = || {
            EngineError::NotAllowed(format!(
                "model \"{}\": not inside a model directory the operator allowed",
                paths::shown(model)
            ))
        };
        let below = self.model_dirs.iter().any(|dir| {
            path.starts_with(dir) || dir.canonicalize().is_ok_and(|d| path.starts_with(d))
        });
        if !below {
            return Err(outside());
        }
        if !path.is_dir() {
            return Err(EngineError::ModelNotFound {
                model: paths::shown(model),
                reason: format!("no directory {}", path.display()),
            });
        }
        paths::confine(path, &self.model_dirs).map_err(|_| outside())
    }

    fn api(&self, cache: &Cache, repo: &Repo) -> Option<hf_hub::api::sync::ApiRepo> {
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(cache.clone()).with_progress(false);
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        match builder.build() {
            Ok(api) => Some(api.repo(repo.clone())),
            Err(err) => {
                tracing::warn!(error = %err, "hub client unavailable; resolving offline only");
                None
            }
        }
    }

    /// The error for a model whose `missing` file is not where `source` keeps it, said once:
    /// the model, the revision, the directory or cache, whether downloads were off or failed.
    fn not_found(
        &self,
        model: &str,
        revision: &str,
        source: &Source,
        missing: &str,
        onnx_names: &[&str],
        download_error: Option<String>,
    ) -> EngineError {
        let repo_dir = match source {
            Source::Dir { dir, .. } => {
                let onnx_names = onnx_names.join(", ");
                let expected = if missing == "no ONNX weights" {
                    format!("no ONNX weights (one of {onnx_names})")
                } else {
                    missing.to_string()
                };
                return EngineError::ModelNotFound {
                    model: paths::shown(model),
                    reason: format!(
                        "{expected} in {} (a model directory holds tokenizer.json, the \
                         sentence-transformers configs and its ONNX weights)",
                        dir.display()
                    ),
                };
            }
            Source::Hub { repo_dir, .. } => repo_dir,
        };
        let folder = repo_dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let missing = if !repo_dir.is_dir() {
            format!("there is no {folder} folder")
        } else {
            format!("{folder} has {missing} for this revision")
        };
        let downloads = match download_error {
            Some(err) => format!("downloading it from the Hugging Face Hub failed: {err}"),
            None if self.offline_env => {
                "downloads are disabled because HF_HUB_OFFLINE is set".to_string()
            }
            None if !self.allow_download => "downloads are disabled (an operator can allow \
                                             them: pgml-proxy --allow-downloads)"
                .to_string(),
            None => "the Hugging Face Hub client could not be started".to_string(),
        };
        EngineError::ModelNotCached {
            model: model.to_string(),
            revision: revision.to_string(),
            missing,
            hub_dir: self.hub_dir.clone(),
            downloads,
        }
    }
}

/// The models in the hub cache at `hub_dir` (its `models--OWNER--NAME` folders), as repo ids,
/// sorted; empty when the directory does not exist.
pub fn cached_models(hub_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(hub_dir) else {
        return Vec::new();
    };
    let mut models: Vec<String> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_prefix("models--")?.replace("--", "/"))
        })
        .collect();
    models.sort();
    models
}

impl Source {
    /// The local path of `name` (a relative name that must resolve inside the directory or
    /// repository, symlinks followed); a failed download's error goes to `download_error`.
    fn fetch(
        &self,
        name: &str,
        download_error: &mut Option<String>,
    ) -> Result<Option<PathBuf>, EngineError> {
        paths::relative_name(name).map_err(|e| EngineError::InvalidName {
            what: "model file",
            reason: format!("{e}: it must be a relative path inside the model repository"),
        })?;
        let found = self.find(name, download_error);
        let Some(path) = found else {
            return Ok(None);
        };
        let (root, roots) = match self {
            Source::Dir { dir, roots } => (dir, roots.as_slice()),
            Source::Hub { repo_dir, .. } => (repo_dir, std::slice::from_ref(repo_dir)),
        };
        paths::confine(&path, roots)
            .map(Some)
            .map_err(|_| EngineError::InvalidName {
                what: "model file",
                reason: format!(
                    "\"{}\" resolves outside the model repository {}",
                    paths::shown(name),
                    root.display()
                ),
            })
    }

    fn find(&self, name: &str, download_error: &mut Option<String>) -> Option<PathBuf> {
        match self {
            Source::Dir { dir, .. } => {
                let path = dir.join(name);
                path.is_file().then_some(path)
            }
            Source::Hub {
                cache,
                repo,
                snapshot,
                api,
                ..
            } => {
                if let Some(path) = cache.repo(repo.clone()).get(name) {
                    return Some(path);
                }
                if let Some(path) = snapshot.as_ref().map(|dir| dir.join(name)) {
                    if path.is_file() {
                        return Some(path);
                    }
                }
                let api = api.as_ref()?;
                match api.get(name) {
                    Ok(path) => Some(path),
                    Err(err) => {
                        tracing::debug!(file = name, error = %err, "not on the hub");
                        *download_error = Some(format!("{}: {err}", api.url(name)));
                        None
                    }
                }
            }
        }
    }
}

/// A Hugging Face repo id as the hub accepts it: `name` or `owner/name`, ASCII letters, digits,
/// `-`, `_`, `.`, no `..` or `--`, at most 96 characters per part.
fn hub_id(model: &str) -> Result<(), PathError> {
    let bad = |why: &str| {
        Err(PathError::Malformed(format!(
            "\"{}\" is not a Hugging Face model id ({why})",
            paths::shown(model)
        )))
    };
    let parts: Vec<&str> = model.split('/').collect();
    if parts.len() > 2 {
        return bad("more than one \"/\"");
    }
    for part in parts {
        let chars_ok = part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if part.is_empty() || part.len() > 96 || !chars_ok {
            return bad("letters, digits, -, _ and . only, at most 96 per part");
        }
        if part.contains("..") || part.contains("--") || part.starts_with(['-', '.']) {
            return bad("no .. or --, no leading - or .");
        }
    }
    Ok(())
}

fn pooling_dir_from_modules(path: &Path) -> Result<Option<String>, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    let modules: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    Ok(modules.iter().find_map(|m| {
        let kind = m.get("type")?.as_str()?;
        kind.ends_with("models.Pooling").then(|| {
            m.get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("1_Pooling")
                .to_string()
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("onnx")).unwrap();
        std::fs::write(dir.join("onnx/model.onnx"), "onnx").unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        dir
    }

    #[test]
    fn local_directories_are_refused_unless_allowed() {
        let hub = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let dir = model_dir(models.path(), "mine");
        let resolver = Resolver::new(hub.path().to_path_buf(), false);
        for model in ["/etc", dir.to_str().unwrap()] {
            let err = resolver.resolve(model, None, None).unwrap_err();
            assert_eq!(err.sqlstate(), "42501", "{model}: {err}");
            assert!(err.to_string().contains("disabled"), "{err}");
        }
        for model in ["../../x", "./mine", "a/b/c", "file:///etc", "x/../../y", ""] {
            let err = resolver.resolve(model, None, None).unwrap_err();
            assert_eq!(err.sqlstate(), "22023", "{model}: {err}");
        }
        let allowed = resolver.with_model_dirs(vec![models.path().to_path_buf()]);
        let files = allowed.resolve(dir.to_str().unwrap(), None, None).unwrap();
        assert!(files.onnx.ends_with("onnx/model.onnx"));
        assert!(allowed.resolve("mine", None, None).is_ok());
        let err = allowed.resolve("/etc", None, None).unwrap_err();
        assert_eq!(err.sqlstate(), "42501", "{err}");
    }

    #[test]
    fn symlinks_cannot_leave_an_allowed_model_directory() {
        let hub = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let elsewhere = model_dir(outside.path(), "other");
        std::os::unix::fs::symlink(&elsewhere, models.path().join("escape")).unwrap();
        let dir = model_dir(models.path(), "mine");
        std::fs::write(outside.path().join("secret.onnx"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.onnx"), dir.join("evil.onnx"))
            .unwrap();
        let resolver = Resolver::new(hub.path().to_path_buf(), false)
            .with_model_dirs(vec![models.path().to_path_buf()]);
        let err = resolver.resolve("escape", None, None).unwrap_err();
        assert_eq!(err.sqlstate(), "42501", "{err}");
        let err = resolver
            .resolve("mine", None, Some("evil.onnx"))
            .unwrap_err();
        assert_eq!(err.sqlstate(), "22023", "{err}");
        assert!(
            err.to_string().contains("outside the model repository"),
            "{err}"
        );
        let err = resolver
            .resolve("mine", None, Some("../../../../etc/passwd"))
            .unwrap_err();
        assert_eq!(err.sqlstate(), "22023", "{err}");
    }

    #[test]
    fn uncached_model_with_downloads_off_says_where_it_looked_and_how_to_enable() {
        let hub = tempfile::tempdir().unwrap();
        let resolver = Resolver::new(hub.path().to_path_buf(), false);
        let err = resolver
            .resolve("someone/some-model", None, None)
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EngineError::ModelNotCached { .. }), "{text}");
        assert!(text.contains("\"someone/some-model\""), "{text}");
        assert!(text.contains(&hub.path().display().to_string()), "{text}");
        assert!(text.contains("downloads are disabled"), "{text}");
        assert!(text.contains("--allow-downloads"), "{text}");
        assert!(text.contains("(revision main)"), "{text}");
        assert!(
            text.contains("there is no models--someone--some-model folder"),
            "{text}"
        );
        let fix = format!(
            "huggingface-cli download someone/some-model --cache-dir {}",
            hub.path().display()
        );
        assert!(text.contains(&fix), "{text}");
        // Each expected file name once, not once per place looked.
        assert_eq!(text.matches("onnx/model.onnx").count(), 1, "{text}");
        assert_eq!(text.matches("tokenizer.json").count(), 1, "{text}");
        let err = resolver
            .resolve("someone/some-model", Some("../../../etc"), None)
            .unwrap_err();
        assert_eq!(err.sqlstate(), "22023", "{err}");
    }

    #[test]
    fn cached_model_without_a_tokenizer_names_the_revision_and_the_file() {
        let hub = tempfile::tempdir().unwrap();
        let snapshot = hub.path().join("models--o--m/snapshots/abc");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("model.onnx"), "onnx").unwrap();
        std::fs::create_dir_all(hub.path().join("models--o--m/refs")).unwrap();
        std::fs::write(hub.path().join("models--o--m/refs/v1"), "abc").unwrap();
        let resolver = Resolver::new(hub.path().to_path_buf(), false);
        let err = resolver.resolve("o/m", Some("v1"), None).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.sqlstate(), "58000", "{text}");
        assert!(text.contains("(revision v1)"), "{text}");
        assert!(
            text.contains("models--o--m has no tokenizer.json for this revision"),
            "{text}"
        );
        assert!(
            text.contains("huggingface-cli download o/m --revision v1 --cache-dir"),
            "{text}"
        );
        assert_eq!(cached_models(hub.path()), vec!["o/m".to_string()]);
        assert!(cached_models(&hub.path().join("absent")).is_empty());
    }

    #[test]
    fn model_directory_without_weights_names_the_directory_once() {
        let hub = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let dir = models.path().join("empty");
        std::fs::create_dir_all(&dir).unwrap();
        let resolver = Resolver::new(hub.path().to_path_buf(), false)
            .with_model_dirs(vec![models.path().to_path_buf()]);
        let err = resolver.resolve("empty", None, None).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.sqlstate(), "58000", "{text}");
        let shown = dir.canonicalize().unwrap().display().to_string();
        assert_eq!(text.matches(&shown).count(), 1, "{text}");
        assert!(
            text.contains("no ONNX weights (one of onnx/model.onnx, model.onnx"),
            "{text}"
        );
    }

    #[test]
    fn hub_cache_files_resolve_through_blobs_inside_the_repo() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--o--m");
        let snapshot = repo.join("snapshots/abc");
        std::fs::create_dir_all(snapshot.join("onnx")).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc").unwrap();
        std::fs::write(repo.join("blobs/1"), "onnx").unwrap();
        std::os::unix::fs::symlink("../../../blobs/1", snapshot.join("onnx/model.onnx")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", snapshot.join("tokenizer.json")).unwrap();
        let resolver = Resolver::new(hub.path().to_path_buf(), false);
        let err = resolver.resolve("o/m", None, None).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        assert_eq!(err.sqlstate(), "22023", "{err}");
        std::fs::remove_file(snapshot.join("tokenizer.json")).unwrap();
        std::fs::write(repo.join("blobs/2"), "{}").unwrap();
        std::os::unix::fs::symlink("../../blobs/2", snapshot.join("tokenizer.json")).unwrap();
        let files = resolver.resolve("o/m", None, None).unwrap();
        assert!(files.onnx.starts_with(repo.canonicalize().unwrap()));
    }
}
