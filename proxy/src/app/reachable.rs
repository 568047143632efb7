//! What the embedded Postgres' unprivileged account must reach when the proxy runs as root:
//! the installation (bin, lib, share with pgvector) and the data directory (also its socket
//! directory). Below a directory that account cannot enter (root's 0700 home, a `mktemp -d`),
//! the installation is copied (`install`), and the data directory placed (`data_dir`), under a
//! root-owned 0755 directory (`/var/lib/pgml-proxy`); the user's own directories keep their
//! permissions. This file holds what both share: the permission walk and the shared root.

mod data_dir;
mod install;

pub use data_dir::data_dir;
pub use install::install;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::app::os_user::{RunAs, ACCOUNT};
use crate::error::{ProxyError, Result};

/// Root-owned, 0755: the copies of installations and the data directories moved out of reach.
pub const SHARED_ROOT: &str = "/var/lib/pgml-proxy";

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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
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
}
