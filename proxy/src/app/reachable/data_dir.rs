//! The data directory the embedded Postgres' account uses: the configured one when the account
//! can enter its parent, else one under the shared root with the configured path made a link to
//! it (a cluster already there is moved; later starts follow the link).

use std::fs;
use std::path::{Path, PathBuf};

use super::{blocked_at, fnv1a, io_error, parent, shared_root, EXECUTE, FNV_OFFSET};
use crate::app::os_user::{RunAs, ACCOUNT};
use crate::error::{ProxyError, Result};

/// The data directory Postgres uses: `data_dir` when the account can enter its parent, else
/// one in `root` named by a hash of `data_dir`'s path, with `data_dir` made a symbolic link to
/// it (so later starts, and the user, find it there). A cluster already in `data_dir` is moved.
pub fn data_dir(data_dir: &Path, account: RunAs, root: &Path) -> Result<PathBuf> {
    let dir_parent = parent(data_dir);
    fs::create_dir_all(dir_parent).map_err(|e| io_error(dir_parent, e))?;
    let path = fs::canonicalize(dir_parent)
        .map_err(|e| io_error(dir_parent, e))?
        .join(data_dir.file_name().unwrap_or_default());
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        match fs::canonicalize(&path) {
            // A link made by an earlier start (or by the user) to a place the account reaches.
            Ok(target) => match blocked_at(parent(&target), account, EXECUTE)? {
                None => return Ok(target),
                Some(blocked) => {
                    return Err(ProxyError::Embedded(format!(
                        "the data directory {} links to {}, inside {}, which the {ACCOUNT} \
                         account cannot enter; link it elsewhere or remove the link",
                        path.display(),
                        target.display(),
                        blocked.display()
                    )))
                }
            },
            // A link to a relocated directory deleted by hand: made again below. Any other
            // dangling link is the user's: initdb reports it.
            Err(_) => {
                let target = fs::read_link(&path).map_err(|e| io_error(&path, e))?;
                if !target.starts_with(root) {
                    return Ok(path);
                }
                fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            }
        }
    }
    let Some(blocked) = blocked_at(parent(&path), account, EXECUTE)? else {
        return Ok(path);
    };
    shared_root(root, account)?;
    let dest = root.join(format!(
        "pgdata-{:016x}",
        fnv1a(FNV_OFFSET, path.as_os_str().as_encoded_bytes())
    ));
    if path.is_dir() {
        move_out(&path, &dest, &blocked)?;
    }
    match std::os::unix::fs::symlink(&dest, &path) {
        Ok(()) => {}
        Err(e) => tracing::warn!(
            link = %path.display(),
            error = %e,
            "could not link the data directory's path to where it lives"
        ),
    }
    tracing::info!(
        data_dir = %path.display(),
        blocked = %blocked.display(),
        placed = %dest.display(),
        "the data directory is where the {ACCOUNT} account cannot reach it ({}); \
         the cluster lives in {} and {} links to it",
        blocked.display(),
        dest.display(),
        path.display()
    );
    Ok(dest)
}

/// Empties the way for the link: an empty data directory (left by a failed initdb) is removed,
/// a cluster is moved to `dest`.
fn move_out(path: &Path, dest: &Path, blocked: &Path) -> Result<()> {
    let empty = fs::read_dir(path)
        .map_err(|e| io_error(path, e))?
        .next()
        .is_none();
    if empty {
        return fs::remove_dir(path).map_err(|e| io_error(path, e));
    }
    if dest.exists() {
        return Err(ProxyError::Embedded(format!(
            "{} holds a data directory the {ACCOUNT} account cannot reach (inside {}), and {} \
             exists too: keep one of them",
            path.display(),
            blocked.display(),
            dest.display()
        )));
    }
    fs::rename(path, dest).map_err(|e| {
        ProxyError::Embedded(format!(
            "moving the data directory {} out of {} (which the {ACCOUNT} account cannot enter) \
             to {}: {e}; move it there yourself",
            path.display(),
            blocked.display(),
            dest.display()
        ))
    })?;
    tracing::info!(from = %path.display(), to = %dest.display(), "moved the data directory");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// An account that owns nothing here and is in none of its groups.
    const STRANGER: RunAs = RunAs {
        uid: 4_242_424,
        gid: 4_242_424,
    };

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_data_dir_out_of_reach_moves_to_the_shared_root_behind_a_link() {
        if !crate::app::os_user::is_root() {
            eprintln!("skipped: the shared root must be owned by root, and this test is not root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let root = tmp.path().join("shared");
        let private = tmp.path().join("home");
        fs::create_dir_all(private.join("checkout/.cache/pgdata")).unwrap();
        fs::write(private.join("checkout/.cache/pgdata/PG_VERSION"), "16").unwrap();
        chmod(&private, 0o700);
        let requested = private.join("checkout/.cache/pgdata");

        let placed = data_dir(&requested, STRANGER, &root).unwrap();
        assert!(placed.starts_with(&root), "{}", placed.display());
        assert_eq!(fs::read_to_string(placed.join("PG_VERSION")).unwrap(), "16");
        assert_eq!(fs::read_link(&requested).unwrap(), placed);
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o755);
        // The next start follows the link.
        assert_eq!(data_dir(&requested, STRANGER, &root).unwrap(), placed);
        // A directory the account reaches stays where it is.
        let open = tmp.path().join("open/pgdata");
        assert_eq!(data_dir(&open, STRANGER, &root).unwrap(), open);
    }
}
