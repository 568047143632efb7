//! Model resolution: a local directory or a Hugging Face repo id in the hub cache layout
//! (offline first; downloads through hf-hub when allowed). Returns file paths only: parsing
//! them is `model_config.rs`'s job, loading them `model.rs`'s.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::EngineError;

/// ONNX weights looked for when kwargs do not name a file, in order.
const ONNX_CANDIDATES: [&str; 5] = [
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
    Dir(PathBuf),
    Hub {
        cache: Cache,
        repo: Repo,
        snapshot: Option<PathBuf>,
        api: Option<hf_hub::api::sync::ApiRepo>,
    },
}

impl Resolver {
    /// A resolver over `hub_dir`; downloads only if `allow_download` and HF_HUB_OFFLINE is unset.
    pub fn new(hub_dir: PathBuf, allow_download: bool) -> Self {
        Resolver {
            hub_dir,
            allow_download: allow_download && !offline_from_env(),
        }
    }

    /// Finds the files of `model` (a directory or a repo id) at `revision`.
    pub fn resolve(
        &self,
        model: &str,
        revision: Option<&str>,
        file_name: Option<&str>,
    ) -> Result<ModelFiles, EngineError> {
        let mut tried = Vec::new();
        let source = self.source(model, revision);
        let onnx_names: Vec<&str> = match file_name {
            Some(name) => vec![name],
            None => ONNX_CANDIDATES.to_vec(),
        };
        let onnx = onnx_names
            .iter()
            .find_map(|name| source.fetch(name, &mut tried));
        let Some(onnx) = onnx else {
            return Err(self.not_found(model, "no ONNX weights", tried));
        };
        let Some(tokenizer) = source.fetch("tokenizer.json", &mut tried) else {
            return Err(self.not_found(model, "no tokenizer.json", tried));
        };
        let modules = source.fetch("modules.json", &mut tried);
        let pooling_dir = modules
            .as_deref()
            .and_then(|path| pooling_dir_from_modules(path).ok().flatten())
            .unwrap_or_else(|| "1_Pooling".to_string());
        let pooling_file = format!("{}/config.json", pooling_dir.trim_end_matches('/'));
        Ok(ModelFiles {
            onnx,
            tokenizer,
            tokenizer_config: source.fetch("tokenizer_config.json", &mut tried),
            config: source.fetch("config.json", &mut tried),
            modules,
            sentence_bert_config: source.fetch("sentence_bert_config.json", &mut tried),
            sentence_transformers_config: source
                .fetch("config_sentence_transformers.json", &mut tried),
            pooling_config: source.fetch(&pooling_file, &mut tried),
        })
    }

    fn source(&self, model: &str, revision: Option<&str>) -> Source {
        let path = Path::new(model);
        if path.is_dir() {
            return Source::Dir(path.to_path_buf());
        }
        let revision = revision.unwrap_or("main").to_string();
        let repo = Repo::with_revision(model.to_string(), RepoType::Model, revision.clone());
        let cache = Cache::new(self.hub_dir.clone());
        // hf-hub follows refs/<revision>; a commit hash has no ref but its own snapshot dir.
        let snapshot = self
            .hub_dir
            .join(repo.folder_name())
            .join("snapshots")
            .join(&revision);
        let snapshot = snapshot.is_dir().then_some(snapshot);
        let api = if self.allow_download {
            self.api(&cache, &repo)
        } else {
            None
        };
        Source::Hub {
            cache,
            repo,
            snapshot,
            api,
        }
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

    fn not_found(&self, model: &str, what: &str, tried: Vec<PathBuf>) -> EngineError {
        let what = if self.allow_download {
            what.to_string()
        } else {
            format!("{what} (offline: downloads disabled)")
        };
        EngineError::ModelNotFound {
            model: model.to_string(),
            what,
            tried,
        }
    }
}

impl Source {
    /// The local path of `name`, recording every place looked at in `tried`.
    fn fetch(&self, name: &str, tried: &mut Vec<PathBuf>) -> Option<PathBuf> {
        match self {
            Source::Dir(dir) => {
                let path = dir.join(name);
                if path.is_file() {
                    return Some(path);
                }
                tried.push(path);
                None
            }
            Source::Hub {
                cache,
                repo,
                snapshot,
                api,
            } => {
                if let Some(path) = cache.repo(repo.clone()).get(name) {
                    return Some(path);
                }
                if let Some(path) = snapshot.as_ref().map(|dir| dir.join(name)) {
                    if path.is_file() {
                        return Some(path);
                    }
                }
                tried.push(expected_cache_path(cache, repo, name));
                let api = api.as_ref()?;
                match api.get(name) {
                    Ok(path) => Some(path),
                    Err(err) => {
                        tracing::debug!(file = name, error = %err, "not on the hub");
                        tried.push(PathBuf::from(api.url(name)));
                        None
                    }
                }
            }
        }
    }
}

/// Where the hub cache would hold `name`: the snapshot its ref points to, or the ref itself.
fn expected_cache_path(cache: &Cache, repo: &Repo, name: &str) -> PathBuf {
    let repo_dir = cache.path().join(repo.folder_name());
    let ref_path = repo_dir.join("refs").join(repo.revision());
    match std::fs::read_to_string(&ref_path) {
        Ok(commit) => repo_dir.join("snapshots").join(commit.trim()).join(name),
        Err(_) => ref_path,
    }
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
