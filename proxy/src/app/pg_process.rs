//! The embedded Postgres' processes: initdb on first start, running commands as the
//! unprivileged account when the proxy runs as root, signals to the postmaster, and recovery
//! from a stale postmaster.pid left by a killed run.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::embedded::{STOP_TIMEOUT, SUPERUSER, SUPERUSER_PASSWORD};
use crate::app::os_user::{self, RunAs};
use crate::error::{ProxyError, Result};

pub(super) fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        send_signal(pid as libc::pid_t, sig);
    }
}

// The crate's one unsafe call: std has no way to signal a process it did not spawn (the
// postmaster recorded in postmaster.pid).
#[allow(unsafe_code)]
pub(super) fn send_signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's or a
    // postmaster recorded in our own data directory.
    unsafe {
        libc::kill(pid, sig);
    }
}

pub(super) fn as_account(cmd: &mut Command, data_dir: &Path, account: Option<RunAs>) {
    if let Some(account) = account {
        // std drops root's supplementary groups when it switches uid.
        cmd.uid(account.uid).gid(account.gid);
    }
    // A working directory the account can enter (the proxy's may be private to root).
    cmd.current_dir(data_dir.parent().unwrap_or(Path::new("/")));
}

pub(super) async fn initdb(bin: &Path, data_dir: &Path, account: Option<RunAs>) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| ProxyError::Embedded(format!("{what}: {e}"));
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| fail("creating the data dir's parent", e))?;
    if data_dir.exists() {
        let empty = fs::read_dir(data_dir)
            .map_err(|e| fail("reading the data dir", e))?
            .next()
            .is_none();
        if !empty {
            return Err(ProxyError::Embedded(format!(
                "{} exists, is not empty and is not a Postgres data directory",
                data_dir.display()
            )));
        }
    } else {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| fail("creating the data dir", e))?;
    }
    let pwfile = parent.join(format!(".pgml-proxy-pwfile-{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&pwfile)
        .and_then(|mut f| std::io::Write::write_all(&mut f, SUPERUSER_PASSWORD.as_bytes()))
        .map_err(|e| fail("writing the password file", e))?;
    if let Some(account) = account {
        os_user::chown_tree(data_dir, account)?;
        os_user::chown_tree(&pwfile, account)?;
    }
    tracing::info!(data_dir = %data_dir.display(), "initialising the embedded Postgres cluster");
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null());
    as_account(&mut cmd, data_dir, account);
    let output = cmd.output().await;
    let _ = fs::remove_file(&pwfile);
    let output = output.map_err(|e| fail("running initdb", e))?;
    if !output.status.success() {
        return Err(ProxyError::Embedded(format!(
            "initdb failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

/// A postmaster.pid left behind by a killed run: remove it if its process is gone; stop the
/// orphaned postmaster if it still runs on this data directory with no proxy above it.
pub(super) async fn recover_stale_pid(data_dir: &Path) -> Result<()> {
    let pid_file = data_dir.join("postmaster.pid");
    let Ok(contents) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let Some(pid) = contents
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        tracing::warn!("removing unreadable postmaster.pid");
        let _ = fs::remove_file(&pid_file);
        return Ok(());
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let is_postgres = fs::read(proc_dir.join("cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("postgres"))
        .unwrap_or(false);
    if !is_postgres {
        tracing::warn!(pid, "removing stale postmaster.pid left by a previous run");
        let _ = fs::remove_file(&pid_file);
        return Ok(());
    }
    let parent_comm = fs::read_to_string(proc_dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim().to_owned()))
        })
        .and_then(|ppid| fs::read_to_string(format!("/proc/{ppid}/comm")).ok())
        .unwrap_or_default();
    if parent_comm.trim() == "pgml-proxy" {
        return Err(ProxyError::Embedded(format!(
            "{} is in use by a running pgml-proxy (postgres pid {pid}); stop it or use another --data-dir",
            data_dir.display()
        )));
    }
    tracing::warn!(
        pid,
        "stopping a Postgres left running on this data directory by a previous run"
    );
    send_signal(pid, libc::SIGINT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while proc_dir.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if proc_dir.exists() {
        return Err(ProxyError::Embedded(format!(
            "a Postgres (pid {pid}) still runs on {}",
            data_dir.display()
        )));
    }
    Ok(())
}
