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
use crate::precision;

use source::{hub_id, Source};

mod source;
#[cfg(test)]
mod tests;

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
    /// The ONNX file's fidelity record (`X.fidelity.json` next to `X.onnx`), which quantized
    /// files ship with (see `precision.rs`).
    pub fidelity: Option<PathBuf>,
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
            if let Some(path) = source.fetch(name, &mut download_error)? {
                onnx = Some((path, *name));
                break;
            }
        }
        let Some((onnx, onnx_name)) = onnx else {
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
            fidelity: optional(&precision::fidelity_name(onnx_name))?,
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
