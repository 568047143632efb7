//! TLS: the proxy terminates client TLS with a certificate given on the command line, and
//! opens TLS to the upstream per --upstream-sslmode (the embedded Postgres has no TLS, so
//! `require` fails with 08006 and `prefer` falls back to plain).

use std::fs;
use std::process::Command;

use pgml_integration_tests::{connect, run_tool, scratch_dir, stack, Proxy};

fn tls_proxy() -> Proxy {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = scratch_dir();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    fs::write(&cert_path, cert.cert.pem()).unwrap();
    fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    Proxy::spawn(
        "tls",
        &[
            "--upstream",
            &stack().direct_url(),
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    )
}

#[test]
fn psql_connects_over_tls_terminated_at_the_proxy() {
    let proxy = tls_proxy();
    let url = format!("{}?sslmode=require", proxy.url());
    let (ok, out, err) = run_tool(
        // The system psql: the bundled one is built without SSL support.
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "\\conninfo", "-c", "SELECT 40 + 2"])
            .arg(&url),
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("SSL connection"), "{out}");
    assert!(out.contains("42"), "{out}");
}

#[tokio::test]
async fn upstream_sslmode_require_without_server_tls_fails_and_prefer_falls_back() {
    let upstream = format!("postgres://127.0.0.1:{}", stack().pg_port.unwrap());
    let require = Proxy::spawn(
        "sslmode-require",
        &["--upstream", &upstream, "--upstream-sslmode", "require"],
    );
    let Err(err) = connect(&require.url()).await else {
        panic!("require must fail");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");

    let prefer = Proxy::spawn(
        "sslmode-prefer",
        &["--upstream", &upstream, "--upstream-sslmode", "prefer"],
    );
    let client = connect(&prefer.url()).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}
