//! The embedded Postgres' well-known superuser `postgres`/`postgres` is never served beyond
//! loopback: `serve --listen 0.0.0.0:PORT` without `--embedded-password` refuses to start and
//! says how to fix it; with the password it starts, the superuser has that password (the
//! default no longer logs in), and a later start without it fails at once, saying why.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgml_integration_tests::{free_port, proxy_bin, required_env, scratch_dir};

/// `pgml-proxy serve` with the embedded Postgres in `data_dir`, listening on `listen`.
fn serve(listen: &str, data_dir: &Path, password: Option<&str>) -> Command {
    let mut cmd = Command::new(proxy_bin());
    cmd.arg("serve")
        .args(["--listen", listen])
        .args(["--pg-dir", &required_env("PGML_PROXY_PG_DIR")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--embedded-port", &free_port().to_string()])
        .args([
            "--shutdown-timeout",
            "2",
            "--offline",
            "--exit-on-stdin-eof",
        ])
        .env_remove("PGML_PROXY_EMBEDDED_PASSWORD")
        .env_remove("PGML_PROXY_METRICS_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        cmd.env("PGML_PROXY_EMBEDDED_PASSWORD", password);
    }
    cmd
}

/// Waits up to `timeout` for `child` to exit on its own; kills it (and fails) otherwise.
fn exit_within(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "pgml-proxy still running after {timeout:?}; its output:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Waits until `port` accepts connections; panics with the log if the child exits first.
fn wait_listening(child: &mut Child, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("pgml-proxy exited ({status}) before listening");
        }
        assert!(
            Instant::now() < deadline,
            "pgml-proxy not listening after 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn logs_in(port: u16, password: &str) -> Result<(), tokio_postgres::Error> {
    let config =
        format!("host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres");
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

#[tokio::test]
async fn the_default_superuser_is_never_served_beyond_loopback() {
    let data_dir = scratch_dir().join("exposed-pgdata");
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");

    let refused = serve(&everywhere, &data_dir, None).spawn().expect("spawn");
    let out = exit_within(refused, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--embedded-password") && stderr.contains("PGML_PROXY_EMBEDDED_PASSWORD"),
        "the error names the fix: {stderr}"
    );
    assert!(!data_dir.exists(), "refused before touching the data dir");

    // The default password given explicitly is still the default.
    let refused = serve(&everywhere, &data_dir, Some("postgres"))
        .spawn()
        .expect("spawn");
    assert!(!exit_within(refused, Duration::from_secs(30))
        .status
        .success());

    let mut started = serve(&everywhere, &data_dir, Some("s3cret'\\pw"))
        .spawn()
        .expect("spawn");
    wait_listening(&mut started, port);
    logs_in(port, "'s3cret\\'\\\\pw'")
        .await
        .expect("the given password logs in");
    let err = logs_in(port, "postgres").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err}"
    );
    drop(started.stdin.take());
    let out = exit_within(started, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // On loopback without the password, the cluster's changed password is reported at once.
    let local = format!("127.0.0.1:{}", free_port());
    let started_at = Instant::now();
    let out = exit_within(
        serve(&local, &data_dir, None).spawn().expect("spawn"),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--embedded-password"), "{stderr}");
    assert!(started_at.elapsed() < Duration::from_secs(20));
}
