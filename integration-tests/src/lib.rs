//! Test harness: starts ONE embedded Postgres behind the real `pgml-proxy` release binary per
//! test binary (temp data dir, free ports), plus extra proxies with other flags on demand.
//! Children shut down when the test binary exits (`--exit-on-stdin-eof`).

pub mod openai_server;
pub mod trust;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running `pgml-proxy serve` child.
pub struct Proxy {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    /// The embedded Postgres port, when this proxy started one.
    pub pg_port: Option<u16>,
    /// The Prometheus /metrics port, when this proxy serves one.
    pub metrics_port: Option<u16>,
    log: PathBuf,
    child: Mutex<(Child, Option<ChildStdin>)>,
}

/// An environment variable the tests need; panics with a clear message when absent.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through `make test` (it exports .cache/env.mk)")
    })
}

/// The proxy binary: $PGML_PROXY_BIN, else $CARGO_TARGET_DIR/release, else <workspace>/target/release.
pub fn proxy_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("PGML_PROXY_BIN") {
        return PathBuf::from(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/pgml-proxy"));
    }
    candidates.push(workspace.join("target/release/pgml-proxy"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("no pgml-proxy release binary in {candidates:?}: run `cargo build --release -p pgml-proxy` or set PGML_PROXY_BIN")
        })
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate has a parent folder")
        .to_path_buf()
}

/// The Python of the virtual environment `make setup` fills ($PGML_PROXY_VENV, else
/// <workspace>/.venv), which has the Python clients (korvus, psycopg, asyncpg).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var("PGML_PROXY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_dir().join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` (it installs the Python clients into .venv)",
        python.display()
    );
    python
}

/// The default model, laid into the hub cache by `make setup`.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The engine's own embeddings of `texts` (`pgml-proxy embed` from the same binary, offline):
/// the reference that vectors served through the proxy must equal.
pub fn engine_embed(model: &str, kwargs: &str, texts: &[&str]) -> Vec<Vec<f32>> {
    use std::io::Write;
    let mut child = Command::new(proxy_bin())
        .args(["embed", "--offline", "--model", model, "--kwargs", kwargs])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pgml-proxy embed");
    let mut input = String::new();
    for t in texts {
        input.push_str(&serde_json::to_string(t).expect("a string encodes as JSON"));
        input.push('\n');
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing texts to pgml-proxy embed");
    let out = child.wait_with_output().expect("pgml-proxy embed");
    assert!(
        out.status.success(),
        "pgml-proxy embed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vectors: Vec<Vec<f32>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("pgml-proxy embed prints JSON arrays"))
        .collect();
    assert_eq!(vectors.len(), texts.len(), "one vector per text");
    vectors
}

/// Largest absolute difference between two vectors of the same length (panics otherwise).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Parses Postgres' text form of a `real[]` (`{0.1,-2e-05,...}`).
pub fn parse_real_array(text: &str) -> Vec<f32> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not an array literal: {text:.80}"));
    if inner.is_empty() {
        return Vec::new();
    }
    inner
        .split(',')
        .map(|x| x.parse().unwrap_or_else(|_| panic!("not a float: {x}")))
        .collect()
}

/// Runs a psql script (`-X -v ON_ERROR_STOP=0 -A -t`) against `url` in `dir`;
/// returns (success, stdout, stderr).
pub fn psql_script(url: &str, dir: &Path, script: &str) -> (bool, String, String) {
    fs::create_dir_all(dir).expect("creating the psql dir");
    let file = dir.join("script.sql");
    fs::write(&file, script).expect("writing the psql script");
    run_tool(
        Command::new(pg_tool("psql"))
            .current_dir(dir)
            .args(["-X", "-A", "-t", "-f"])
            .arg(&file)
            .arg(url),
    )
}

/// When the server at `url` last loaded its configuration files, as a new backend sees it
/// (`pg_conf_load_time()` of a session started after the postmaster's last reload).
pub fn conf_load_time(url: &str) -> String {
    let (ok, out, err) = run_tool(
        Command::new(pg_tool("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT pg_conf_load_time()"])
            .arg(url),
    );
    assert!(ok, "pg_conf_load_time(): {err}");
    out.trim().to_owned()
}

/// Waits until new sessions at `url` see a configuration loaded after `before` (from
/// `conf_load_time`): `pg_reload_conf()` only signals the postmaster, which reloads (pg_hba.conf
/// too) when it gets to it.
pub fn wait_for_reload(url: &str, before: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while conf_load_time(url) == before {
        assert!(
            Instant::now() < deadline,
            "the server did not reload its configuration"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A jsonb query parameter for tokio-postgres, sent in binary (version byte 1, then the text).
#[derive(Debug)]
pub struct Jsonb<'a>(pub &'a str);

impl tokio_postgres::types::ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A Postgres client program (psql, pgbench): the embedded install's, else the system's.
pub fn pg_tool(name: &str) -> PathBuf {
    let bundled = PathBuf::from(required_env("PGML_PROXY_PG_DIR"))
        .join("bin")
        .join(name);
    if bundled.is_file() {
        bundled
    } else {
        PathBuf::from(name)
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A scratch directory for this test binary (emptied on first use).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let name = exe
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("tests")
            .to_owned();
        let dir = std::env::temp_dir().join("pgml-proxy-it").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the scratch dir");
        dir
    })
}

/// `cmd` as it runs from a shell that exported nothing (only PATH and HOME kept), in a
/// directory outside the checkout: what a user gets after `make setup` without `make`.
pub fn in_fresh_shell(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.current_dir(scratch_dir())
}

impl Proxy {
    /// Starts `pgml-proxy serve` with `args` (plus --listen and --exit-on-stdin-eof) and waits
    /// until it accepts connections.
    pub fn spawn(label: &str, args: &[&str]) -> Proxy {
        let mut cmd = Command::new(proxy_bin());
        // PGML_PROXY_TEST_LOG=debug gives the proxies' logs more detail when a test fails.
        cmd.env(
            "RUST_LOG",
            std::env::var("PGML_PROXY_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        Proxy::spawn_command(label, cmd, args)
    }

    /// `spawn` with the proxy's log filter set to `rust_log` (RUST_LOG syntax), for a test that
    /// reads a debug line of one module in the proxy's log.
    pub fn spawn_logging(label: &str, rust_log: &str, args: &[&str]) -> Proxy {
        let mut cmd = Command::new(proxy_bin());
        cmd.env("RUST_LOG", rust_log);
        Proxy::spawn_command(label, cmd, args)
    }

    /// `spawn` from a shell that exported nothing (see [`in_fresh_shell`]).
    pub fn spawn_in_fresh_shell(label: &str, args: &[&str]) -> Proxy {
        let mut cmd = Command::new(proxy_bin());
        in_fresh_shell(&mut cmd);
        Proxy::spawn_command(label, cmd, args)
    }

    fn spawn_command(label: &str, mut cmd: Command, args: &[&str]) -> Proxy {
        let port = free_port();
        let log = scratch_dir().join(format!("{label}.log"));
        let log_file = fs::File::create(&log).expect("creating the proxy log");
        let mut child = cmd
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("spawning pgml-proxy");
        let stdin = child.stdin.take().expect("stdin");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "pgml-proxy exited ({status}) before listening; log {}:\n{}",
                    log.display(),
                    read(&log)
                );
            }
            if Instant::now() > deadline {
                panic!("pgml-proxy not listening after 120 s; log:\n{}", read(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Proxy {
            port,
            pg_port: None,
            metrics_port: None,
            log,
            child: Mutex::new((child, Some(stdin))),
        }
    }

    /// URL through this proxy as the embedded superuser.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// URL straight to the embedded Postgres (panics if this proxy has none).
    pub fn direct_url(&self) -> String {
        let port = self.pg_port.expect("this proxy has no embedded Postgres");
        format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
    }

    /// tokio-postgres configuration string through the proxy for `user`/`password`.
    pub fn config_for(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres",
            self.port
        )
    }

    /// Closes the proxy's stdin: with --exit-on-stdin-eof, it begins a graceful shutdown.
    pub fn begin_shutdown(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.1.take();
    }

    /// Waits up to `timeout` for the proxy process to exit; its status, if it did.
    pub fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(status)) = child.0.try_wait() {
                return Some(status);
            }
            drop(child);
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The proxy's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.lock().unwrap_or_else(|e| e.into_inner()).0.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// GET `path` from the proxy's metrics endpoint; the response body (panics without one).
    pub fn http_get(&self, path: &str) -> String {
        use std::io::Write;
        let port = self.metrics_port.expect("this proxy has no --metrics-addr");
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        // One write: the endpoint reads the request with a single read.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .expect("writing the HTTP request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the HTTP response");
        match response.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_owned(),
            None => panic!("malformed HTTP response: {response}"),
        }
    }

    /// The value of one Prometheus sample line (`name{labels}` exactly as exposed), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.http_get("/metrics")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    let _ = fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    s
}

/// The shared stack of this test binary: embedded Postgres + proxy, started on first use.
pub fn stack() -> &'static Proxy {
    static STACK: OnceLock<Proxy> = OnceLock::new();
    STACK.get_or_init(|| {
        let metrics_port = free_port();
        let datasets = workspace_dir().join("datasets");
        let mut proxy = spawn_embedded(
            "embedded",
            "pgdata",
            &[
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--datasets-dir",
                datasets.to_str().expect("utf-8 workspace path"),
            ],
        );
        proxy.metrics_port = Some(metrics_port);
        proxy
    })
}

/// A proxy with an embedded Postgres of its own (data in `scratch_dir()/<data_dir>`, a free
/// port), offline, plus `extra` flags.
pub fn spawn_embedded(label: &str, data_dir: &str, extra: &[&str]) -> Proxy {
    let pg_dir = required_env("PGML_PROXY_PG_DIR");
    let pg_port = free_port();
    let data_dir = scratch_dir().join(data_dir);
    let port = pg_port.to_string();
    let mut args = vec![
        "--pg-dir",
        &pg_dir,
        "--data-dir",
        data_dir.to_str().expect("utf-8 temp dir"),
        "--embedded-port",
        &port,
        "--shutdown-timeout",
        "2",
        "--offline",
    ];
    args.extend_from_slice(extra);
    let mut proxy = Proxy::spawn(label, &args);
    proxy.pg_port = Some(pg_port);
    proxy
}

/// (object, owner) of schemas pgml and pgml_proxy, the relations in pgml_proxy and the
/// functions in both, through `client` (connected to the database to look at).
pub async fn shim_owners(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n
              WHERE n.nspname IN ('pgml', 'pgml_proxy')
             UNION ALL
             SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner)::text FROM pg_class c
              WHERE c.relnamespace = 'pgml_proxy'::regnamespace
             UNION ALL
             SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text FROM pg_proc p
              WHERE p.pronamespace IN ('pgml'::regnamespace, 'pgml_proxy'::regnamespace)",
            &[],
        )
        .await
        .expect("the shim's owners")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the background.
pub async fn connect(config: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs a client program and returns (success, stdout, stderr).
pub fn run_tool(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("running a client program");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A StartupMessage (protocol 3.0) with `params`, for hand-written protocol clients.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// The severity and SQLSTATE of the first ErrorResponse in `answer` (raw server bytes).
pub fn first_error(answer: &[u8]) -> Option<(String, String)> {
    let mut rest = answer;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = rest.get(5..1 + len)?;
        if rest[0] == b'E' {
            let (mut severity, mut code) = (String::new(), String::new());
            let mut fields = body;
            while let Some((&field, tail)) = fields.split_first() {
                let Some(end) = tail.iter().position(|&b| b == 0) else {
                    break;
                };
                let value = String::from_utf8_lossy(&tail[..end]).into_owned();
                match field {
                    b'S' => severity = value,
                    b'C' => code = value,
                    _ => {}
                }
                fields = &tail[end + 1..];
            }
            return Some((severity, code));
        }
        rest = rest.get(1 + len..)?;
    }
    None
}
