//! A throwaway Postgres for this crate's tests: initdb + pg_ctl from $PGML_PROXY_PG_DIR/bin into a
//! temp dir (trust auth, a free port), run as `nobody` when the tests run as root; stopped on drop.
//! As root, Postgres runs from a copy of the installation inside the temp dir: the checkout
//! (where `make setup` installs it) may sit below a directory `nobody` cannot enter (/root).

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
}

/// uid/gid of `nobody`, for running Postgres when we are root (it refuses to run as root).
fn nobody() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "nobody"]).output()?;
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// Copies the installation under `to`, keeping a pip wheel's layout (its binaries find
/// `<package>.libs`, beside the package, by an $ORIGIN-relative RPATH); the copy's bin/lib/share.
fn copy_install(pg_dir: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let package = pg_dir.parent().context("the installation's package")?;
    let package_name = package.file_name().context("a package name")?;
    let copy = to.join(package_name).join("pginstall");
    copy_tree(pg_dir, &copy)?;
    let mut libs = package_name.to_owned();
    libs.push(".libs");
    let libs_dir = package.parent().context("site-packages")?.join(&libs);
    if libs_dir.is_dir() {
        copy_tree(&libs_dir, &to.join(&libs))?;
    }
    Ok(copy)
}

/// Copies a tree as root: directories 0755 (the umask may say otherwise), files readable by all.
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            std::fs::copy(&from, &to)?;
            let exec = std::fs::metadata(&from)?.mode() & 0o111 != 0;
            let mode = if exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

impl TempPostgres {
    pub fn start() -> anyhow::Result<Self> {
        let pg_dir = std::env::var_os("PGML_PROXY_PG_DIR")
            .context("PGML_PROXY_PG_DIR is not set: run `make setup` and load .cache/env.mk")?;
        let dir = tempfile::tempdir()?;
        let user = if std::fs::metadata("/proc/self")?.uid() == 0 {
            Some(nobody()?)
        } else {
            None
        };
        let bin = match user {
            Some((uid, gid)) => {
                let copy = copy_install(Path::new(&pg_dir), &dir.path().join("install"))?;
                eprintln!(
                    "TempPostgres: root runs Postgres as nobody, from a copy of {} in {}",
                    Path::new(&pg_dir).display(),
                    copy.display()
                );
                std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
                copy.join("bin")
            }
            None => PathBuf::from(pg_dir).join("bin"),
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pg = TempPostgres {
            dir,
            bin,
            port,
            user,
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            port,
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "start",
            ],
        )?;
        Ok(pg)
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn connect(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A fresh database (so tests in one binary do not see each other's tables).
    pub async fn create_db(&self, name: &str) -> anyhow::Result<tokio_postgres::Client> {
        self.connect("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        self.connect(name).await
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-m", "immediate", "stop"],
        );
    }
}
