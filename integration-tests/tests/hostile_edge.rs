//! The edge against hostile or unusual clients: unauthenticated clients cannot make the proxy
//! buffer large messages or hold a slot past the authentication timeout; Parse with more than
//! 32,767 parameters (unsigned counts) works as directly; repeated startup parameters follow
//! Postgres (last wins); --print-config hides passwords; upstream TLS verify-ca/verify-full.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgml_integration_tests::trust::{add_trust_role, TestCa};
use pgml_integration_tests::{
    connect, first_error, proxy_bin, run_tool, stack, startup_packet, Proxy,
};

/// A role that logs in without a password over TCP and the Unix socket (`trust` lines first in
/// pg_hba.conf), so a hand-written protocol client needs no SCRAM.
fn trust_user() -> &'static str {
    static USER: OnceLock<&'static str> = OnceLock::new();
    USER.get_or_init(|| {
        add_trust_role("edge_trust", "");
        "edge_trust"
    })
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A hand-written protocol client: what tokio-postgres will not send.
struct Raw {
    conn: TcpStream,
}

impl Raw {
    /// Logs in (trust) with `params`, reading up to the first ReadyForQuery.
    fn login(port: u16, params: &[(&str, &str)]) -> Raw {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        conn.write_all(&startup_packet(params)).unwrap();
        let mut raw = Raw { conn };
        raw.until_ready();
        raw
    }

    fn read_message(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 5];
        self.conn.read_exact(&mut header).unwrap();
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.conn.read_exact(&mut body).unwrap();
        (header[0], body)
    }

    /// The text of every column of every DataRow up to ReadyForQuery; panics on an error.
    fn until_ready(&mut self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        loop {
            let (tag, body) = self.read_message();
            match tag {
                b'Z' => return rows,
                b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
                b'D' => rows.push(data_row(&body)),
                _ => {}
            }
        }
    }
}

fn data_row(body: &[u8]) -> Vec<String> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let (value, tail) = rest[4..].split_at(len.max(0) as usize);
            rest = tail;
            String::from_utf8_lossy(value).into_owned()
        })
        .collect()
}

#[test]
fn unauthenticated_clients_announcing_a_gigabyte_get_08p01_and_no_memory() {
    let proxy = Proxy::spawn("edge-oom", &["--upstream", &stack().direct_url()]);
    // The baseline: one session all the way through, so the proxy's lazy set-up is counted.
    Raw::login(
        proxy.port,
        &[("user", trust_user()), ("database", "postgres")],
    );
    let baseline = proxy.peak_rss();
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let port = proxy.port;
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
                // Far below the 60 s authentication timeout a slow refusal would end in.
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                // A SCRAM user: the proxy waits for a password message, which announces 1 GB.
                conn.write_all(&startup_packet(&[
                    ("user", "postgres"),
                    ("database", "postgres"),
                ]))
                .unwrap();
                let mut header = vec![b'p'];
                header.extend_from_slice(&1_000_000_000u32.to_be_bytes());
                conn.write_all(&header).unwrap();
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..(16 * 1024 * 1024 / chunk.len()) {
                    if conn.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let mut answer = Vec::new();
                let _ = conn.read_to_end(&mut answer);
                first_error(&answer)
            })
        })
        .collect();
    for client in clients {
        let error = client.join().unwrap();
        assert_eq!(
            error,
            Some(("FATAL".to_owned(), "08P01".to_owned())),
            "each client is refused"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused promptly, not after {:?} (the authentication timeout is 60 s)",
        started.elapsed()
    );
    let grown = proxy.peak_rss().saturating_sub(baseline);
    assert!(
        grown < 32 * 1024 * 1024,
        "the proxy grew by {} MiB for 20 unauthenticated clients",
        grown >> 20
    );
    // Others keep working.
    Raw::login(
        proxy.port,
        &[("user", trust_user()), ("database", "postgres")],
    );
}

#[test]
fn a_client_that_sends_nothing_is_closed_after_the_authentication_timeout() {
    let proxy = Proxy::spawn(
        "edge-auth-timeout",
        &[
            "--upstream",
            &stack().direct_url(),
            "--authentication-timeout",
            "1",
        ],
    );
    let started = Instant::now();
    // Nothing at all, and a StartupMessage whose password never comes.
    let mut silent = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let mut stalled = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    stalled
        .write_all(&startup_packet(&[
            ("user", "postgres"),
            ("database", "postgres"),
        ]))
        .unwrap();
    for conn in [&mut silent, &mut stalled] {
        // Only a bound on a hang: the proxy must close first.
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .expect("closed by the proxy, not by the read timeout");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
}

/// `SELECT cardinality(ARRAY[$1, ..., $n])` with n int4 parameters, all 7, through the
/// extended protocol; returns the one value.
fn many_parameters(port: u16, n: usize) -> String {
    let mut raw = Raw::login(port, &[("user", trust_user()), ("database", "postgres")]);
    let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    let sql = format!("SELECT cardinality(ARRAY[{}])", placeholders.join(","));
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&(n as u16).to_be_bytes());
    for _ in 0..n {
        parse.extend_from_slice(&23u32.to_be_bytes());
    }
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&0u16.to_be_bytes());
    bind.extend_from_slice(&(n as u16).to_be_bytes());
    for _ in 0..n {
        bind.extend_from_slice(&1i32.to_be_bytes());
        bind.push(b'7');
    }
    bind.extend_from_slice(&0u16.to_be_bytes());
    let mut out = message(b'P', &parse);
    out.extend(message(b'B', &bind));
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out.extend(message(b'S', b""));
    raw.conn.write_all(&out).unwrap();
    let rows = raw.until_ready();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0][0].clone()
}

#[test]
fn parse_and_bind_with_40000_parameters_work_as_directly() {
    let direct = many_parameters(stack().pg_port.unwrap(), 40_000);
    assert_eq!(direct, "40000");
    assert_eq!(many_parameters(stack().port, 40_000), direct);
}

#[test]
fn a_repeated_startup_parameter_keeps_its_last_value_and_the_proxy_adds_none() {
    // The proxy sends Postgres the client's startup parameters and none of its own (a
    // transaction-mode pooler would refuse or lose them): a client's own `pgml_proxy.*`
    // setting is just a setting, which nothing of the shim reads.
    let mut raw = Raw::login(
        stack().port,
        &[
            ("user", trust_user()),
            ("database", "postgres"),
            ("application_name", "first"),
            ("pgml_proxy.session", "spoofed"),
            ("application_name", "second"),
        ],
    );
    raw.conn
        .write_all(&message(
            b'Q',
            b"SELECT current_setting('application_name'), \
              current_setting('pgml_proxy.session', true), \
              current_setting('pgml_proxy.upcall_timeout_ms', true) IS NULL, \
              (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                WHERE n.nspname IN ('pgml', 'pgml_proxy') AND p.prosrc LIKE '%pgml_proxy.session%')\0",
        ))
        .unwrap();
    let rows = raw.until_ready();
    assert_eq!(rows[0][0], "second");
    assert_eq!(rows[0][1], "spoofed", "the client's own setting, as sent");
    assert_eq!(rows[0][2], "t", "the proxy added no parameter");
    assert_eq!(rows[0][3], "0", "no shim function reads the setting");
}

#[test]
fn print_config_never_shows_passwords() {
    let (ok, out, err) = run_tool(Command::new(proxy_bin()).args([
        "serve",
        "--print-config",
        "--upstream",
        "postgres://app:upstream-secret@db.example:5432/app",
        "--service-url",
        "postgres://svc:service-secret@db.example/app?sslmode=require",
    ]));
    assert!(ok, "{out}\n{err}");
    for secret in ["upstream-secret", "service-secret"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(
        out.contains("postgres://app:***@db.example:5432/app"),
        "{out}"
    );
}

/// A TLS-speaking upstream: a second proxy that terminates TLS with `cert` in front of the
/// embedded Postgres (the bundled Postgres is built without TLS).
fn tls_upstream(label: &str, cert: &(PathBuf, PathBuf)) -> Proxy {
    Proxy::spawn(
        label,
        &[
            "--upstream",
            &stack().direct_url(),
            "--tls-cert",
            cert.0.to_str().unwrap(),
            "--tls-key",
            cert.1.to_str().unwrap(),
        ],
    )
}

/// Whether a session through a proxy to `upstream` (over TLS with `sslmode` and `root`) works;
/// the SQLSTATE when it does not.
async fn through(
    label: &str,
    upstream: &Proxy,
    sslmode: &str,
    root: Option<&PathBuf>,
) -> Result<(), String> {
    let mut url = format!("postgres://localhost:{}/postgres", upstream.port);
    if let Some(root) = root {
        url.push_str(&format!("?sslrootcert={}", root.display()));
    }
    let proxy = Proxy::spawn(label, &["--upstream", &url, "--upstream-sslmode", sslmode]);
    match connect(&proxy.url()).await {
        Ok(client) => {
            client
                .batch_execute("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(err) => Err(err
            .code()
            .map_or_else(|| err.to_string(), |c| c.code().to_owned())),
    }
}

#[tokio::test]
async fn upstream_verify_ca_checks_the_chain_and_verify_full_the_host_too() {
    let ca = TestCa::new("edge test CA");
    let root = ca.write_root("edge-root.crt");
    let other_root = TestCa::new("another CA").write_root("edge-other-root.crt");
    let named = tls_upstream(
        "edge-tls-localhost",
        &ca.write_server("localhost", "edge-localhost"),
    );
    let misnamed = tls_upstream(
        "edge-tls-elsewhere",
        &ca.write_server("elsewhere.example", "edge-elsewhere"),
    );

    assert_eq!(
        through("edge-full-ok", &named, "verify-full", Some(&root)).await,
        Ok(())
    );
    assert_eq!(
        through("edge-ca-ok", &misnamed, "verify-ca", Some(&root)).await,
        Ok(())
    );
    assert_eq!(
        through("edge-full-misnamed", &misnamed, "verify-full", Some(&root)).await,
        Err("08006".to_owned()),
        "verify-full checks the host name"
    );
    assert_eq!(
        through("edge-ca-wrong-root", &named, "verify-ca", Some(&other_root)).await,
        Err("08006".to_owned()),
        "verify-ca checks the chain"
    );
    // require without a root certificate encrypts but authenticates nothing (as libpq); with
    // one it checks the chain, as libpq's require does when a root certificate is present.
    assert_eq!(
        through("edge-require-any", &named, "require", None).await,
        Ok(())
    );
    assert_eq!(
        through("edge-require-root", &named, "require", Some(&other_root)).await,
        Err("08006".to_owned())
    );
}
