//! The proxy's connections to the upstream follow libpq's sslmode: without one, TLS is tried
//! (libpq's default, prefer) and plain TCP used only when the server does not offer TLS, with a
//! warning in the log when that plain link leaves this host; verify-full checks a certificate
//! made here against the host name and says what is wrong when it does not match; require fails
//! against a server without TLS. The TLS-speaking upstream is a second proxy terminating TLS in
//! front of the embedded Postgres (the bundled Postgres is built without TLS).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;

use pgml_integration_tests::trust::TestCa;
use pgml_integration_tests::{connect, stack, Proxy};

/// A TLS-speaking upstream: a proxy terminating TLS with `cert` in front of the embedded
/// Postgres, logging for each connection whether it came over TLS (`tls=true|false`).
fn tls_front(label: &str, cert: &(PathBuf, PathBuf)) -> Proxy {
    Proxy::spawn_logging(
        label,
        "info,pgml_proxy::session::connection=debug",
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

/// The `tls=` field of every connection start-up line in `log`.
fn startups_over_tls(log: &str) -> Vec<bool> {
    log.lines()
        .filter(|l| l.contains("startup"))
        .filter_map(|l| {
            if l.contains("tls=true") {
                Some(true)
            } else if l.contains("tls=false") {
                Some(false)
            } else {
                None
            }
        })
        .collect()
}

/// A session through `proxy` as the embedded superuser: Ok, or the server's message.
async fn session(proxy: &Proxy) -> Result<(), String> {
    let client = connect(&proxy.url()).await.map_err(|e| {
        e.as_db_error().map_or_else(
            || e.to_string(),
            |db| format!("{}: {}", db.code().code(), db.message()),
        )
    })?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// An address of this host that is not loopback (what the routing table would send from), so
/// that a connection to it counts as leaving the host. No packet is sent.
fn non_loopback_ip() -> IpAddr {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    // TEST-NET-3: never routed anywhere real; connect() only picks a source address.
    socket
        .connect(("203.0.113.1", 9))
        .expect("this test needs a non-loopback IPv4 address with a route (any default route)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no non-loopback address: {ip}"
    );
    ip
}

/// A plain TCP forwarder listening on `ip` (a free port) to the embedded Postgres; its port.
fn forwarder(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = ("127.0.0.1", stack().pg_port.unwrap());
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let Ok(outbound) = TcpStream::connect(target) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            pipe(outbound, inbound);
        }
    });
    port
}

const CLEAR_TEXT_WARNING: &str = "leave this host in clear text";

#[tokio::test]
async fn without_an_sslmode_the_upstream_link_is_tls_when_the_server_offers_it() {
    let ca = TestCa::new("default-mode CA");
    let front = tls_front(
        "tls-front-default",
        &ca.write_server("localhost", "default-localhost"),
    );
    let proxy = Proxy::spawn(
        "default-sslmode",
        &[
            "--upstream",
            &format!("postgres://localhost:{}/postgres", front.port),
        ],
    );
    assert_eq!(session(&proxy).await, Ok(()), "{}", proxy.log());
    let seen = startups_over_tls(&front.log());
    assert!(!seen.is_empty(), "no start-up logged:\n{}", front.log());
    assert!(
        seen.iter().all(|&tls| tls),
        "every connection to a TLS-capable upstream is TLS by default: {seen:?}\n{}",
        front.log()
    );
    assert!(proxy.log().contains("use TLS"), "{}", proxy.log());
}

#[tokio::test]
async fn verify_full_accepts_the_certificate_made_here_and_says_when_the_host_is_not_its() {
    let ca = TestCa::new("verify-full CA");
    let root = ca.write_root("verify-full-root.crt");
    let front = tls_front(
        "tls-front-verify",
        &ca.write_server("localhost", "verify-localhost"),
    );
    let url = |host: &str| {
        format!(
            "postgres://{host}:{}/postgres?sslrootcert={}",
            front.port,
            root.display()
        )
    };
    let named = Proxy::spawn(
        "verify-full-named",
        &[
            "--upstream",
            &url("localhost"),
            "--upstream-sslmode",
            "verify-full",
        ],
    );
    assert_eq!(session(&named).await, Ok(()), "{}", named.log());
    assert!(
        named.log().contains("chain and host name are verified"),
        "{}",
        named.log()
    );

    // The certificate names localhost only: 127.0.0.1 is the same server, not the same name.
    let misnamed = Proxy::spawn(
        "verify-full-misnamed",
        &[
            "--upstream",
            &format!("{}&sslmode=verify-full", url("127.0.0.1")),
        ],
    );
    let err = session(&misnamed).await.unwrap_err();
    assert!(err.starts_with("08006"), "{err}");
    assert!(
        err.contains("does not name \"127.0.0.1\"") && err.contains("verify-full"),
        "the error says which name and which check: {err}"
    );

    // A CA that did not sign it: the chain check says so, naming the file.
    let other = TestCa::new("another CA").write_root("verify-other-root.crt");
    let unchained = Proxy::spawn(
        "verify-full-other-ca",
        &[
            "--upstream",
            &format!(
                "postgres://localhost:{}/postgres?sslrootcert={}",
                front.port,
                other.display()
            ),
            "--upstream-sslmode",
            "verify-full",
        ],
    );
    let err = session(&unchained).await.unwrap_err();
    assert!(
        err.contains("does not chain") && err.contains("verify-other-root.crt"),
        "{err}"
    );
}

#[tokio::test]
async fn require_fails_against_a_server_without_tls_and_prefer_stays_plain_on_loopback_quietly() {
    let upstream = format!("postgres://127.0.0.1:{}/postgres", stack().pg_port.unwrap());
    let require = Proxy::spawn(
        "require-no-tls",
        &["--upstream", &upstream, "--upstream-sslmode", "require"],
    );
    let err = session(&require).await.unwrap_err();
    assert!(
        err.starts_with("08006") && err.contains("does not support TLS"),
        "{err}"
    );

    let prefer = Proxy::spawn("prefer-loopback", &["--upstream", &upstream]);
    assert_eq!(session(&prefer).await, Ok(()));
    let log = prefer.log();
    assert!(log.contains("stay on this host"), "{log}");
    assert!(!log.contains(CLEAR_TEXT_WARNING), "{log}");
}

#[tokio::test]
async fn a_plain_upstream_link_that_leaves_the_host_is_logged_as_a_warning() {
    let ip = non_loopback_ip();
    let port = forwarder(ip);
    let upstream = format!("postgres://{ip}:{port}/postgres");

    // prefer (the default): the server answers the SSLRequest with N, the session goes plain.
    let prefer = Proxy::spawn("prefer-remote", &["--upstream", &upstream]);
    assert_eq!(session(&prefer).await, Ok(()), "{}", prefer.log());
    let log = prefer.log();
    let warning = log
        .lines()
        .find(|l| l.contains(CLEAR_TEXT_WARNING))
        .unwrap_or_else(|| panic!("no clear-text warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("does not offer TLS"), "{warning}");
    assert!(
        warning.contains("verify-full"),
        "says what to do: {warning}"
    );

    let disable = Proxy::spawn(
        "disable-remote",
        &["--upstream", &upstream, "--upstream-sslmode", "disable"],
    );
    assert_eq!(session(&disable).await, Ok(()));
    let log = disable.log();
    assert!(
        log.lines()
            .any(|l| l.contains(CLEAR_TEXT_WARNING) && l.contains("sslmode is disable")),
        "{log}"
    );
}
