//! Where one resolution's files come from (an allowed directory or the hub cache), how a
//! name is fetched there and confined to it, and what a hub repo id may look like.

use std::path::PathBuf;

use hf_hub::{Cache, Repo};

use crate::error::EngineError;
use crate::paths::{self, PathError};

/// One place files can come from (one per resolution, so variant size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Source {
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

impl Source {
    /// The local path of `name` (a relative name that must resolve inside the directory or
    /// repository, symlinks followed); a failed download's error goes to `download_error`.
    pub(super) fn fetch(
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
pub(super) fn hub_id(model: &str) -> Result<(), PathError> {
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
