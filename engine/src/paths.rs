//! Client-named paths: syntax checks for names a client sends (model ids, file names,
//! revisions, dataset names) and confinement of resolved paths to operator-configured roots.
//! Shared with pgml-bulk; knows nothing about models or datasets.

use std::path::{Component, Path, PathBuf};

/// Longest name a client may send (model id, file name, revision, dataset name), in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Why a client-named path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not a well-formed relative name (absolute, `..`, URL, NUL, empty, too long).
    Malformed(String),
    /// Well formed, but it resolves outside every allowed directory (symlinks followed).
    Outside(PathBuf),
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::Malformed(reason) => f.write_str(reason),
            PathError::Outside(path) => write!(
                f,
                "{} is outside the directories the operator allowed",
                path.display()
            ),
        }
    }
}

/// `name` for an error message: at most 80 characters, control characters escaped.
pub fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(80).flat_map(char::escape_debug).collect();
    if name.chars().nth(80).is_some() {
        out.push_str("...");
    }
    out
}

/// Checks the syntax every client-named path shares: not empty, not too long, no NUL or
/// backslash, not a URL.
fn plain(name: &str) -> Result<(), PathError> {
    let bad = |why: &str| Err(PathError::Malformed(format!("\"{}\" {why}", shown(name))));
    if name.is_empty() {
        return Err(PathError::Malformed("name is empty".into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return bad(&format!("is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.contains('\0') || name.contains('\\') {
        return bad("contains a NUL or backslash");
    }
    if name.contains("://") || name.to_ascii_lowercase().starts_with("file:") {
        return bad("is a URL; only names are accepted");
    }
    Ok(())
}

/// A relative name that stays below whatever directory it is joined to: no root, no `..`,
/// no empty or `.` components (`onnx/model.onnx` is fine, `../x`, `/x`, `a//b` are not).
pub fn relative_name(name: &str) -> Result<&Path, PathError> {
    plain(name)?;
    let bad = |why: &str| Err(PathError::Malformed(format!("\"{}\" {why}", shown(name))));
    if name.starts_with('/') {
        return bad("is an absolute path; give a path relative to the directory");
    }
    if name.split('/').any(|part| part.is_empty() || part == ".") {
        return bad("has an empty or \".\" path component");
    }
    let path = Path::new(name);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return bad("has a \"..\" path component");
    }
    Ok(path)
}

/// A name that is either a relative name (see [`relative_name`]) or an absolute path without
/// `..` components; which of the two the caller decides with `Path::is_absolute`.
pub fn path_name(name: &str) -> Result<&Path, PathError> {
    match name.strip_prefix('/') {
        Some(rest) => {
            relative_name(rest)?;
            Ok(Path::new(name))
        }
        None => relative_name(name),
    }
}

/// `path` with symlinks resolved, if it lies inside one of `roots` (also resolved);
/// the existing path is required.
pub fn confine<P: AsRef<Path>>(path: &Path, roots: &[P]) -> Result<PathBuf, PathError> {
    let real = path
        .canonicalize()
        .map_err(|_| PathError::Outside(path.to_path_buf()))?;
    let inside = roots.iter().any(|root| {
        root.as_ref()
            .canonicalize()
            .is_ok_and(|root| real.starts_with(root))
    });
    if inside {
        Ok(real)
    } else {
        Err(PathError::Outside(path.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_refuse_escapes_urls_and_absolute_paths() {
        for ok in ["model.onnx", "onnx/model_qint8_avx512.onnx", "a.b/c-d_e"] {
            assert!(relative_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../../../../etc/passwd",
            "onnx/../../x",
            "..",
            "./x",
            "a//b",
            "a/",
            "file:///etc/shadow",
            "http://example.com/x",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(
                matches!(relative_name(bad), Err(PathError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(relative_name(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn path_names_allow_absolute_paths_without_dot_dot() {
        assert!(path_name("/data/x.parquet").is_ok());
        assert!(path_name("/data/../etc/passwd").is_err());
        assert!(path_name("//etc").is_err());
    }

    #[test]
    fn confine_follows_symlinks_out_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("in.txt"), "x").unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let roots = [root.path()];
        assert!(confine(&root.path().join("in.txt"), &roots).is_ok());
        assert!(matches!(
            confine(&root.path().join("link"), &roots),
            Err(PathError::Outside(_))
        ));
        assert!(confine(Path::new("/etc/passwd"), &roots).is_err());
        assert!(confine(&root.path().join("missing"), &roots).is_err());
    }

    #[test]
    fn shown_names_are_short_and_escaped() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"x".repeat(200)).len(), 83);
    }
}
