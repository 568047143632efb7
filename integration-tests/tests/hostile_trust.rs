//! The proxy never lends the upstream's trust to its clients: it relays authentication and does
//! not authenticate clients itself, so an upstream that lets the proxy in without a password
//! (a `peer` line over the Unix socket, mapping the proxy's OS user to its role; a `trust` line)
//! would let every network client in. `serve` refuses to start then, naming the role, the kind
//! of line and the flag; with `--dangerously-allow-passwordless-upstream` it starts and warns.
//! A password-checking line (TCP here) starts as before.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgml_integration_tests::{
    conf_load_time, connect, free_port, proxy_bin, required_env, scratch_dir, spawn_embedded,
    wait_for_reload, Proxy,
};

const FLAG: &str = "--dangerously-allow-passwordless-upstream";

/// The OS user running the tests (and the proxies they start): what `peer` maps to a role.
fn os_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `pgml-proxy serve ARGS`, which must exit with an error within a minute (it would
/// listen forever otherwise); its stderr.
fn refused(args: &[&str]) -> String {
    let mut child = Command::new(proxy_bin())
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .args([
            "--offline",
            "--shutdown-timeout",
            "2",
            "--exit-on-stdin-eof",
        ])
        .env_remove("PGML_PROXY_DANGEROUSLY_ALLOW_PASSWORDLESS_UPSTREAM")
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pgml-proxy");
    // Held open: end of stdin would stop a proxy that did start, and hide that it did.
    let stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "pgml-proxy started instead of refusing:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "exit status 0:\n{stderr}");
    stderr
}

fn write_hba(data_dir: &Path, lines: &[&str]) {
    std::fs::write(data_dir.join("pg_hba.conf"), lines.join("\n") + "\n").expect("pg_hba.conf");
}

#[tokio::test]
async fn an_upstream_that_lets_the_proxy_in_without_a_password_is_refused_unless_allowed() {
    let user = os_user();
    let data_dir: PathBuf = scratch_dir().join("trust-pgdata");

    // A cluster (password-checking, as the embedded one is made) with a role for our OS user.
    let setup = spawn_embedded("trust-setup", "trust-pgdata", &[]);
    let admin = connect(&setup.direct_url()).await.unwrap();
    if user != "postgres" {
        admin
            .batch_execute(&format!("CREATE ROLE \"{user}\" LOGIN"))
            .await
            .unwrap();
    }
    drop(admin);
    setup.begin_shutdown();
    assert!(setup.wait_exit(Duration::from_secs(60)).is_some());

    // Debian's default for local connections: peer, the OS user as the role of that name.
    write_hba(
        &data_dir,
        &[
            "local all all peer",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ],
    );

    // The embedded mode reaches its Postgres over that socket too: refused as well.
    let pg_dir = required_env("PGML_PROXY_PG_DIR");
    let embedded_port = free_port().to_string();
    let err = refused(&[
        "--pg-dir",
        &pg_dir,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--embedded-port",
        &embedded_port,
    ]);
    for part in [&format!("\"{user}\""), "Unix socket", "peer", FLAG] {
        assert!(err.contains(part), "{part} missing from:\n{err}");
    }

    // With the flag it serves, and says what that means.
    let host = spawn_embedded("trust-host", "trust-pgdata", &[FLAG]);
    let log = host.log();
    assert!(
        log.contains(FLAG) && log.contains("without a password") && log.contains(&user),
        "{log}"
    );
    let pg_port = host.pg_port.unwrap();
    let socket_url = format!(
        "postgresql:///postgres?host={}&port={pg_port}",
        data_dir.display()
    );
    let tcp_url = format!("postgres://127.0.0.1:{pg_port}/postgres");

    // --upstream through the socket: refused, naming the role, the kind of line, the flag.
    let err = refused(&["--upstream", &socket_url]);
    assert!(err.contains("refusing to start"), "{err}");
    for part in [&format!("\"{user}\""), "Unix socket", "`local` line", FLAG] {
        assert!(err.contains(part), "{part} missing from:\n{err}");
    }

    // Over TCP the host line asks for a password: it starts as before.
    let checked = Proxy::spawn("trust-tcp", &["--upstream", &tcp_url]);
    assert!(!checked.log().contains(FLAG), "{}", checked.log());
    let no_password = |port: u16| format!("host=127.0.0.1 port={port} user={user} dbname=postgres");
    assert!(connect(&no_password(checked.port)).await.is_err());

    // Allowed through the socket: a network client logs in as our OS user's role with no
    // password at all, which is what the refusal protects against.
    let allowed = Proxy::spawn("trust-socket-allowed", &["--upstream", &socket_url, FLAG]);
    assert!(allowed.log().contains(FLAG), "{}", allowed.log());
    let client = connect(&no_password(allowed.port))
        .await
        .expect("passwordless, as allowed");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, user);

    // `trust` for every role over TCP: the made-up role is let in too, and the superuser can
    // read pg_hba_file_rules, so the refusal names the line.
    let before = conf_load_time(&host.direct_url());
    write_hba(
        &data_dir,
        &[
            "host all all 127.0.0.1/32 trust",
            "local all all peer",
            "host all all ::1/128 scram-sha-256",
        ],
    );
    let admin = connect(&host.direct_url()).await.unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    wait_for_reload(&host.direct_url(), &before);
    let err = refused(&["--upstream", &tcp_url]);
    for part in [
        "\"postgres\"",
        "any role",
        "over TCP",
        "line 1: host all all 127.0.0.1 255.255.255.255 trust",
        FLAG,
    ] {
        assert!(err.contains(part), "{part} missing from:\n{err}");
    }
}
