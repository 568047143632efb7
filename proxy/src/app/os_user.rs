//! The unprivileged OS account the embedded Postgres runs as when the proxy runs as root
//! (Postgres refuses to run as root): found, or created with `useradd --system`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::error::{ProxyError, Result};

/// The account the proxy creates or reuses.
pub const ACCOUNT: &str = "pgmlproxy";

/// A uid/gid to run child processes as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Whether this process runs as root (the owner of /proc/self is the effective uid).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The account to run Postgres as: `None` when not root (run as ourselves).
pub fn postgres_account() -> Result<Option<RunAs>> {
    if !is_root() {
        return Ok(None);
    }
    if let Some(found) = lookup(ACCOUNT)? {
        return Ok(Some(found));
    }
    tracing::info!(
        account = ACCOUNT,
        "creating a system user to run Postgres as"
    );
    let status = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--shell", "/usr/sbin/nologin", ACCOUNT])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => tracing::warn!(?other, "useradd failed"),
    }
    lookup(ACCOUNT)?.map(Some).ok_or_else(|| {
        ProxyError::Embedded(format!(
            "running as root and could not create the user {ACCOUNT:?} to run Postgres as; \
             create it (useradd --system {ACCOUNT}) or run the proxy as a normal user"
        ))
    })
}

fn lookup(name: &str) -> Result<Option<RunAs>> {
    let id = |flag: &str| -> Result<Option<u32>> {
        let out = Command::new("id")
            .args([flag, name])
            .output()
            .map_err(|e| ProxyError::Embedded(format!("running id: {e}")))?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse().ok())
    };
    match (id("-u")?, id("-g")?) {
        (Some(uid), Some(gid)) => Ok(Some(RunAs { uid, gid })),
        _ => Ok(None),
    }
}

/// Gives `path` and everything under it to `account` (a data directory made by another user).
pub fn chown_tree(path: &Path, account: RunAs) -> Result<()> {
    let fail = |e: std::io::Error| ProxyError::Embedded(format!("chown {}: {e}", path.display()));
    let meta = std::fs::symlink_metadata(path).map_err(fail)?;
    if meta.uid() != account.uid || meta.gid() != account.gid {
        std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid)).map_err(fail)?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(fail)? {
            chown_tree(&entry.map_err(fail)?.path(), account)?;
        }
    }
    Ok(())
}
