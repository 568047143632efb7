//! The embedded Postgres used when no `--upstream` is given: initdb (SCRAM, superuser
//! `postgres`/`postgres`, UTF8) on first start, then the postmaster as a child process on a
//! private 127.0.0.1 port and a Unix socket inside its data directory (which only its owner
//! and root can enter: the proxy's own connections use it, being cheaper than loopback TCP),
//! pgvector created, fast shutdown on stop. The proxy's service connection does not use the
//! superuser: at each start the superuser (re)creates the least-privilege service role with a
//! fresh random password (kept in memory only: nothing on disk to protect, rotated on every
//! start) and installs the shim, owned by that role, in `postgres` and `template1` (so every
//! database created from template1 has it; others need `pgml-proxy install`).
//! As root it runs Postgres as an unprivileged account (see `os_user`), from where that account
//! can reach the installation and the data directory (see `reachable`).
//! With `--embedded-password` the superuser's password is set to it at each start; without one,
//! the well-known default is only acceptable while the proxy listens on loopback
//! ([`check_exposure`]).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::app::os_user;
use crate::app::pg_process::{as_account, initdb, recover_stale_pid, signal};
use crate::app::reachable;
use crate::app::service_role;
use crate::error::{ProxyError, Result};
use crate::intercept::shim::SERVICE_ROLE;

/// The superuser the embedded cluster is created with, and its password.
pub const SUPERUSER: &str = "postgres";
pub(super) const SUPERUSER_PASSWORD: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the embedded Postgres lives.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// A Postgres installation with bin/initdb and bin/postgres (and pgvector installed).
    pub pg_dir: PathBuf,
    /// The data directory (created on first start, reused afterwards).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The superuser's password (`--embedded-password`); `None` keeps the default.
    pub superuser_password: Option<String>,
}

/// The name of the option that sets the superuser's password, for messages.
const PASSWORD_OPTION: &str = "--embedded-password (or PGML_PROXY_EMBEDDED_PASSWORD)";

/// Refuses to serve the embedded Postgres' well-known `postgres`/`postgres` superuser on an
/// address other machines can reach: `listen` must be loopback unless a password was given.
pub fn check_exposure(listen: &str, superuser_password: Option<&str>) -> Result<()> {
    let explicit = superuser_password.is_some_and(|p| !p.is_empty() && p != SUPERUSER_PASSWORD);
    if explicit || is_loopback(listen) {
        return Ok(());
    }
    Err(ProxyError::Config(format!(
        "refusing to listen on {listen} with the embedded Postgres' default superuser \
         {SUPERUSER}/{SUPERUSER_PASSWORD}: anyone who can reach that address could log in as \
         superuser. Set a password with {PASSWORD_OPTION}, listen on 127.0.0.1, or give \
         --upstream for a Postgres you configured yourself"
    )))
}

/// Whether `listen` (`HOST:PORT`) is on 127.0.0.0/8, ::1 or `localhost` only.
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A running embedded Postgres, stopped by `stop` (or, as a last resort, on drop).
pub struct EmbeddedPostgres {
    child: Child,
    superuser_password: String,
    service_password: String,
    port: u16,
    socket: Option<PathBuf>,
    data_dir: PathBuf,
}

impl EmbeddedPostgres {
    /// Initialises the data directory if needed, starts Postgres and waits until it serves.
    pub async fn start(options: &EmbeddedOptions) -> Result<Self> {
        let started = Instant::now();
        let bin = options.pg_dir.join("bin");
        if !bin.join("postgres").is_file() {
            return Err(ProxyError::Embedded(format!(
                "no postgres binary in {} (the Postgres installation named by --pg-dir, \
                 PGML_PROXY_PG_DIR or pg-dir in the settings file): run `make setup`, which \
                 installs one and records it, or point --pg-dir at a Postgres 16 with pgvector",
                bin.display()
            )));
        }
        let data_dir = std::path::absolute(&options.data_dir)
            .map_err(|e| ProxyError::Embedded(format!("data dir: {e}")))?;
        let account = os_user::postgres_account()?;
        // The account may not reach a checkout below a private directory (root's home).
        let (pg_dir, data_dir) = match account {
            Some(account) => {
                let root = Path::new(reachable::SHARED_ROOT);
                (
                    reachable::install(&options.pg_dir, account, root)?,
                    reachable::data_dir(&data_dir, account, root)?,
                )
            }
            None => (options.pg_dir.clone(), data_dir),
        };
        let bin = pg_dir.join("bin");
        if !data_dir.join("PG_VERSION").is_file() {
            initdb(&bin, &data_dir, account).await?;
        } else if let Some(account) = account {
            os_user::chown_tree(&data_dir, account)?;
        }
        recover_stale_pid(&data_dir).await?;
        let port = match options.port {
            0 => free_port()?,
            port => port,
        };
        let log_path = data_dir.with_extension("log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| ProxyError::Embedded(format!("{}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| ProxyError::Embedded(e.to_string()))?;
        let socket_dir = socket_dir(&data_dir, port);
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // No socket in /tmp: one in the private data directory for the proxy, or none.
            .args([
                "-c",
                &format!(
                    "unix_socket_directories={}",
                    socket_dir.as_deref().and_then(Path::to_str).unwrap_or("")
                ),
            ])
            .args(["-c", "unix_socket_permissions=0700"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a terminal's Ctrl-C reaches the proxy only, which drains
            // its sessions first and then stops Postgres itself.
            .process_group(0);
        as_account(&mut cmd, &data_dir, account);
        let child = cmd
            .spawn()
            .map_err(|e| ProxyError::Embedded(format!("starting postgres: {e}")))?;
        let mut pg = EmbeddedPostgres {
            child,
            superuser_password: options
                .superuser_password
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| SUPERUSER_PASSWORD.to_owned()),
            service_password: String::new(),
            port,
            socket: socket_dir.map(|dir| dir.join(socket_name(port))),
            data_dir,
        };
        pg.wait_ready(&log_path).await?;
        pg.prepare_service_role().await?;
        tracing::info!(
            port,
            data_dir = %pg.data_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded Postgres ready"
        );
        Ok(pg)
    }

    /// The port Postgres listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket Postgres listens on (in the data directory), when its path fits.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A superuser connection URL for the embedded server, to `database`.
    fn superuser_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            percent_encode(&self.superuser_password),
            self.port
        )
    }

    /// Whether the superuser's password is the well-known default.
    pub fn default_password(&self) -> bool {
        self.superuser_password == SUPERUSER_PASSWORD
    }

    /// The proxy's service connection URL: the least-privilege service role.
    pub fn service_url(&self) -> String {
        format!(
            "postgres://{SERVICE_ROLE}:{}@127.0.0.1:{}/postgres",
            self.service_password, self.port
        )
    }

    /// Creates the service role with a fresh password and installs the shim as it in
    /// `postgres` and `template1` (whose connection must be closed before any CREATE DATABASE).
    async fn prepare_service_role(&mut self) -> Result<()> {
        let fail = |e: String| ProxyError::Embedded(format!("preparing the service role: {e}"));
        let password = service_role::random_password().map_err(fail)?;
        for (database, password) in [("postgres", Some(password.as_str())), ("template1", None)] {
            let (client, task) = service_role::connect_pinned(&self.superuser_url(database))
                .await
                .map_err(fail)?;
            service_role::admin_install(&client, password)
                .await
                .map_err(|e| fail(format!("database {database}: {e}")))?;
            drop(client);
            let _ = task.await;
        }
        self.service_password = password;
        Ok(())
    }

    /// Fast shutdown: Postgres disconnects its sessions, checkpoints and exits.
    pub async fn stop(mut self) -> Result<()> {
        signal(&self.child, libc::SIGINT);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(%status, "embedded Postgres stopped");
                Ok(())
            }
            Ok(Err(e)) => Err(ProxyError::Embedded(format!("waiting for postgres: {e}"))),
            Err(_) => {
                signal(&self.child, libc::SIGQUIT);
                let _ = self.child.wait().await;
                Err(ProxyError::Embedded(
                    "postgres did not stop in time; sent SIGQUIT".into(),
                ))
            }
        }
    }

    async fn wait_ready(&mut self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // The cluster has the default password when new (initdb), the wanted one afterwards.
        let mut candidates = vec![self.superuser_password.clone()];
        if self.superuser_password != SUPERUSER_PASSWORD {
            candidates.push(SUPERUSER_PASSWORD.to_owned());
        }
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProxyError::Embedded(format!(
                    "postgres exited during start-up ({status}); its log: {}\n{}",
                    log_path.display(),
                    log_tail(log_path)
                )));
            }
            let mut refused = 0;
            for password in &candidates {
                let mut config = tokio_postgres::Config::new();
                config
                    .host("127.0.0.1")
                    .port(self.port)
                    .user(SUPERUSER)
                    .password(password.as_str())
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(2));
                match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        let conn = tokio::spawn(connection);
                        let prepared = self.prepare_superuser(&client, password).await;
                        drop(client);
                        let _ = conn.await;
                        return prepared;
                    }
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) =>
                    {
                        refused += 1;
                    }
                    Err(_) => break,
                }
            }
            if refused == candidates.len() {
                return Err(ProxyError::Embedded(format!(
                    "the embedded Postgres in {} refused the superuser {SUPERUSER}'s password: \
                     give the one it was last started with in {PASSWORD_OPTION}",
                    self.data_dir.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(ProxyError::Embedded(format!(
                    "postgres not ready after {READY_TIMEOUT:?}; its log: {}",
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the superuser's password to the wanted one if `current` is another, and creates
    /// pgvector.
    async fn prepare_superuser(
        &self,
        client: &tokio_postgres::Client,
        current: &str,
    ) -> Result<()> {
        if current != self.superuser_password {
            let literal = format!(
                "E'{}'",
                self.superuser_password
                    .replace('\\', "\\\\")
                    .replace('\'', "''")
            );
            // Not logged even where log_statement is set: the statement holds the password.
            client
                .batch_execute(&format!(
                    "SET log_statement = 'none'; ALTER ROLE {SUPERUSER} PASSWORD {literal}; \
                     RESET log_statement"
                ))
                .await
                .map_err(|e| {
                    ProxyError::Embedded(format!("setting the superuser's password: {e}"))
                })?;
            tracing::info!("embedded Postgres: superuser password set from {PASSWORD_OPTION}");
        }
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
            .await
            .map_err(|e| ProxyError::Embedded(format!("CREATE EXTENSION vector: {e}")))
    }
}

/// `text` as a URL's userinfo part: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        // Not stopped through `stop` (an error path): ask for a fast shutdown anyway.
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(&self.child, libc::SIGINT);
        }
    }
}

fn socket_name(port: u16) -> String {
    format!(".s.PGSQL.{port}")
}

/// The data directory as the socket directory, unless the socket path would not fit in a
/// `sockaddr_un` (107 bytes) or needs quoting in `unix_socket_directories`.
fn socket_dir(data_dir: &Path, port: u16) -> Option<PathBuf> {
    let text = data_dir.to_str()?;
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b));
    let fits = data_dir.join(socket_name(port)).as_os_str().len() < 100;
    (plain && fits).then(|| data_dir.to_owned())
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ProxyError::Embedded(format!("finding a free port: {e}")))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_goes_in_the_data_dir_when_its_path_fits() {
        let dir = Path::new("/work/.cache/pgdata");
        assert_eq!(socket_dir(dir, 6433), Some(dir.to_owned()));
        let long = PathBuf::from(format!("/{}", "d".repeat(90)));
        assert_eq!(socket_dir(&long, 6433), None);
        assert_eq!(socket_dir(Path::new("/tmp/a b,c"), 6433), None);
    }

    #[test]
    fn the_default_password_is_refused_beyond_loopback() {
        for listen in [
            "127.0.0.1:6432",
            "127.1.2.3:1",
            "[::1]:6432",
            "localhost:6432",
        ] {
            assert!(is_loopback(listen), "{listen}");
            assert!(check_exposure(listen, None).is_ok());
        }
        for listen in [
            "0.0.0.0:6432",
            "[::]:6432",
            "10.0.0.5:6432",
            "db.example:6432",
        ] {
            assert!(!is_loopback(listen), "{listen}");
            let err = check_exposure(listen, None).unwrap_err().to_string();
            assert!(err.contains("--embedded-password"), "{err}");
            assert!(check_exposure(listen, Some("")).is_err());
            assert!(check_exposure(listen, Some(SUPERUSER_PASSWORD)).is_err());
            assert!(check_exposure(listen, Some("s3cret")).is_ok());
        }
        assert!(is_loopback("[::ffff:127.0.0.1]:6432"));
        assert_eq!(percent_encode("a b/c%é"), "a%20b%2Fc%25%C3%A9");
    }
}
