//! Tests of `net::upstream`: URLs, sslmode resolution, and the SSLRequest exchange against
//! small hand-written servers.

use super::*;

#[test]
fn urls_give_host_and_port() {
    let cases = [
        ("postgres://db.example.com:5433", ("db.example.com", 5433)),
        (
            "postgresql://u:p@10.0.0.1/app?sslmode=require",
            ("10.0.0.1", 5432),
        ),
        ("postgres://[::1]:6000/x", ("::1", 6000)),
        (
            "postgres://%2Frun%2Fpostgresql:5433/db",
            ("/run/postgresql", 5433),
        ),
        (
            "postgres:///db?host=/tmp/pg%20dir&port=7000",
            ("/tmp/pg dir", 7000),
        ),
        ("postgres://ignored:1/db?sslmode=disable&host=h2", ("h2", 1)),
    ];
    for (url, (host, port)) in cases {
        assert_eq!(
            parse_url(url).map(|p| (p.host, p.port)).unwrap(),
            (host.to_owned(), port),
            "{url}"
        );
    }
    for bad in [
        "http://x",
        "postgres://:5",
        "postgres://h:notaport",
        "postgres://%2x/db",
        "postgres:///db",
    ] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn postgres_config_takes_libpq_tls_parameters_out_and_keeps_the_rest() {
    use tokio_postgres::config::SslMode as PgSslMode;
    let (config, _) = postgres_config(
        "postgres://svc:pw@db:6000/app?sslmode=require&application_name=x",
        SslMode::Disable,
    )
    .unwrap();
    assert_eq!(config.get_user(), Some("svc"));
    assert_eq!(config.get_password(), Some(&b"pw"[..]));
    assert_eq!(config.get_dbname(), Some("app"));
    assert_eq!(config.get_application_name(), Some("x"));
    assert_eq!(config.get_ssl_mode(), PgSslMode::Require);
    let (config, _) = postgres_config("postgres://svc@db/app", SslMode::Prefer).unwrap();
    assert_eq!(config.get_ssl_mode(), PgSslMode::Prefer);
    // libpq's default where the URL names no mode; the URL's own where it does.
    let (config, _) = postgres_config("postgres://svc@db/app", SslMode::Disable).unwrap();
    assert_eq!(config.get_ssl_mode(), PgSslMode::Prefer);
    let (config, _) =
        postgres_config("postgres://svc@db/app?sslmode=disable", SslMode::Disable).unwrap();
    assert_eq!(config.get_ssl_mode(), PgSslMode::Disable);
    let err = postgres_config(
        "postgres://svc:pw@db/app?sslmode=verify-full",
        SslMode::Disable,
    )
    .unwrap_err();
    assert!(err.to_string().contains("sslrootcert"), "{err}");
    let err =
        postgres_config("postgres://svc:hunter2@db/app?bogus=1", SslMode::Disable).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_url_sslmode_stricter_than_the_flag_wins_and_neither_means_prefer() {
    let up =
        Upstream::from_url("postgres://db:1/x?sslmode=require", Some(SslMode::Disable)).unwrap();
    assert_eq!(up.sslmode, SslMode::Require);
    let up =
        Upstream::from_url("postgres://db:1/x?sslmode=disable", Some(SslMode::Prefer)).unwrap();
    assert_eq!(up.sslmode, SslMode::Prefer);
    let up = Upstream::from_url("postgres://db:1/x?sslmode=disable", None).unwrap();
    assert_eq!(up.sslmode, SslMode::Disable);
    let up = Upstream::from_url("postgres://db:1/x", None).unwrap();
    assert_eq!(up.sslmode, SslMode::Prefer, "libpq's default");
    assert!(up.connector.is_some(), "prefer tries TLS");
    let up = Upstream::from_url("postgres://db:1/x", Some(SslMode::Disable)).unwrap();
    assert!(up.connector.is_none());
}

#[test]
fn verify_modes_need_a_root_certificate() {
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = Upstream::from_url("postgres://db:5432", Some(mode)).unwrap_err();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }
    let err = Upstream::from_url(
        "postgres://db:5432/x?sslrootcert=/nonexistent/root.crt",
        Some(SslMode::VerifyFull),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");
}

#[test]
fn a_socket_directory_host_means_a_unix_socket() {
    let up = Upstream::from_url("postgres://%2Frun%2Fpg:6000", Some(SslMode::Require)).unwrap();
    assert_eq!(up.target, Target::Unix("/run/pg/.s.PGSQL.6000".into()));
    assert_eq!(up.addr(), "/run/pg/.s.PGSQL.6000");
    assert!(up.is_unix_socket());
    // Even verify-full: libpq never uses TLS over a Unix socket, so needs no root there.
    let up = Upstream::from_url("postgresql:///db?host=/run/pg&sslmode=verify-full", None);
    assert!(up.is_ok_and(|up| up.connector.is_none()));
    let up = Upstream::from_url("postgres://db:6000", Some(SslMode::Disable)).unwrap();
    assert_eq!(up.addr(), "db:6000");
}

/// A server on 127.0.0.1 that answers one SSLRequest with `answer`, then closes.
async fn answering(answer: &'static [u8]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if tcp.read_exact(&mut request).await.is_ok() {
                let _ = tcp.write_all(answer).await;
            }
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        }
    });
    port
}

#[tokio::test]
async fn prefer_goes_plain_on_n_and_require_fails_saying_why() {
    let port = answering(b"N").await;
    let prefer = Upstream::new("127.0.0.1", port, SslMode::Prefer).unwrap();
    assert!(matches!(prefer.connect().await, Ok(PgStream::Plain(_))));
    assert_eq!(prefer.link.load(Ordering::Relaxed), Link::PlainLocal as u8);
    let require = Upstream::new("127.0.0.1", port, SslMode::Require).unwrap();
    let Err(err) = require.connect().await else {
        panic!("require over plain");
    };
    assert!(err.to_string().contains("does not support TLS"), "{err}");
}

#[tokio::test]
async fn an_error_answer_to_the_ssl_request_is_reported_with_its_message() {
    const TOO_MANY: &[u8] = b"E\0\0\0\x34SFATAL\0C53300\0Msorry, too many clients already\0\0";
    let port = answering(TOO_MANY).await;
    let up = Upstream::new("127.0.0.1", port, SslMode::Prefer).unwrap();
    let Err(err) = up.connect().await else {
        panic!("an error answer accepted");
    };
    assert!(err.to_string().contains("too many clients"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_the_ssl_request_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Upstream::new("127.0.0.1", port, SslMode::Prefer).unwrap();
    let Err(err) = up.connect_within(Duration::from_millis(200)).await else {
        panic!("no timeout");
    };
    assert!(err.to_string().contains("timed out"), "{err}");
    drop(listener);
}
