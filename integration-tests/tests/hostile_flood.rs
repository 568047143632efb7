//! Connection floods cannot lock clients out. Sockets that never send a startup packet, and
//! CancelRequests, count as connections not yet authenticated: one source gets at most its
//! share (more are answered FATAL 53300 and closed at once, so they hold no descriptor), each
//! lasts no longer than the startup deadline, and a client from another address is served
//! throughout. The flood comes from 127.0.0.1, the client from 127.0.0.2 (both loopback).

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgml_integration_tests::{first_error, stack, startup_packet, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;

/// Floods from 127.0.0.1 would turn away the other tests' connections: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The CancelRequest code, and the process id the flood's CancelRequests name.
const CANCEL_CODE: u32 = 80_877_102;
const FLOOD_PID: u32 = 424_242;

/// The pid of the process started with `--listen 127.0.0.1:<port>` (the harness keeps its
/// children to itself).
fn pid_listening_on(port: u16) -> u32 {
    let listen = format!("127.0.0.1:{port}");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--listen" && w[1] == listen.as_bytes())
        {
            return pid;
        }
    }
    panic!("no process runs with --listen {listen}");
}

/// Sets the open-files limits (soft:hard, either may be empty) of process `pid` with
/// util-linux's prlimit.
fn limit_files(pid: u32, limits: &str) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limits}"))
        .output()
        .expect("prlimit (util-linux) must be installed");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This test process needs room for its own flood: raises its soft limit to `n` if lower.
fn room_for_sockets(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let fields: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files")
        .split_whitespace()
        .collect();
    let soft = fields[3].parse::<u64>().unwrap_or(u64::MAX);
    let hard = fields[4].parse::<u64>().unwrap_or(u64::MAX);
    if soft < n {
        assert!(hard >= n, "the hard open-files limit ({hard}) is below {n}");
        limit_files(std::process::id(), &format!("{n}:"));
    }
}

/// The shared stack, its proxy held to 1024 open files (the usual default, what the review
/// ran under): a flood it did not turn away would run it out of descriptors.
fn flooded() -> &'static Proxy {
    static LIMITED: OnceLock<()> = OnceLock::new();
    let proxy = stack();
    LIMITED.get_or_init(|| limit_files(pid_listening_on(proxy.port), "1024:1024"));
    proxy
}

/// Whether the server has answered or closed `conn` (without waiting).
fn answered_or_closed(mut conn: &TcpStream) -> bool {
    conn.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    let done = match conn.read(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    conn.set_nonblocking(false).expect("blocking");
    done
}

/// Everything the server sends until it closes (a reset ends it too), within `limit`.
async fn answer(conn: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, conn.read(&mut buf)).await {
            Err(_) => panic!("the server neither answered nor closed within {limit:?}"),
            Ok(Ok(0)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => return got,
            Ok(Err(e)) => panic!("reading: {e}"),
        }
    }
}

/// A tokio connection to 127.0.0.1:`port` from `source`.
async fn connect_from(source: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("address"), 0))
        .expect("bind");
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect")
}

/// The superuser's session through the proxy on `port`, connected from `source`.
async fn session_from(source: &str, port: u16) -> tokio_postgres::Client {
    let stream = connect_from(source, port).await;
    let config: tokio_postgres::Config = "user=postgres password=postgres dbname=postgres"
        .parse()
        .expect("config");
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .expect("a client from another source must be served");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_address_is_served_through_a_flood_of_1100_idle_sockets() {
    let _serial = SERIAL.lock().await;
    let proxy = flooded();
    room_for_sockets(4096);
    let refused_before =
        proxy.metric("pgml_proxy_connections_refused_total{reason=\"unauthenticated_per_source\"}");
    let port = proxy.port;
    let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..1100)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("flood connect"))
            .collect()
    })
    .await
    .expect("flood");

    let started = Instant::now();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        session_from("127.0.0.2", proxy.port),
    )
    .await
    .expect("a client from another address is served within 10 s of the flood");
    let row = client.query_one("SELECT 41 + 1", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let served_in = started.elapsed();
    assert!(
        served_in < Duration::from_secs(5),
        "served after {served_in:?}"
    );

    // The flood holds its source's share (64 by default); the rest were closed at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = idle.iter().filter(|conn| !answered_or_closed(conn)).count();
    assert_eq!(held, 64, "idle sockets the proxy still holds");
    let refused = proxy
        .metric("pgml_proxy_connections_refused_total{reason=\"unauthenticated_per_source\"}")
        - refused_before;
    assert_eq!(refused, 1036.0);
    drop(idle);
    drop(client);
}

#[test]
fn idle_sockets_are_closed_at_the_startup_deadline_and_authentication_keeps_its_own() {
    let _serial = SERIAL.blocking_lock();
    let pg_port = stack().pg_port.expect("embedded Postgres");
    let proxy = Proxy::spawn(
        "short-deadlines",
        &[
            "--upstream",
            &format!("postgres://127.0.0.1:{pg_port}"),
            "--startup-timeout",
            "1",
            "--authentication-timeout",
            "4",
        ],
    );
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect"))
        .collect();
    // A client that says who it is, gets the password request, and never answers it.
    let mut authenticating = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    std::io::Write::write_all(
        &mut authenticating,
        &startup_packet(&[("user", "postgres"), ("database", "postgres")]),
    )
    .expect("startup");
    authenticating
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut header = [0u8; 5];
    authenticating
        .read_exact(&mut header)
        .expect("password request");
    assert_eq!(header[0], b'R', "an authentication request");
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    authenticating
        .read_exact(&mut vec![0u8; len - 4])
        .expect("its body");

    for conn in &mut idle {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        match conn.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "an idle socket gets no answer"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900) && idle_for < Duration::from_secs(3),
        "idle sockets closed after {idle_for:?}"
    );
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    assert!(
        !answered_or_closed(&authenticating),
        "the authenticating client is not cut at the startup deadline"
    );
    let mut rest = Vec::new();
    authenticating.read_to_end(&mut rest).expect("read");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(3900) && after < Duration::from_secs(7),
        "authentication cut after {after:?}"
    );
    let text = String::from_utf8_lossy(&rest);
    assert_eq!(
        first_error(&rest),
        Some(("FATAL".into(), "08P01".into())),
        "{text}"
    );
    assert!(
        text.contains("canceling authentication due to timeout"),
        "{text}"
    );
}

/// In front of Postgres at `pg_port`: CancelRequests naming `FLOOD_PID` are held until the
/// proxy closes them (counted: now, at most at once, in all); everything else is passed on.
struct CancelTarpit {
    port: u16,
    held: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
}

async fn cancel_tarpit(pg_port: u16) -> CancelTarpit {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tarpit = CancelTarpit {
        port: listener.local_addr().expect("addr").port(),
        held: Arc::default(),
        most: Arc::default(),
        arrived: Arc::default(),
    };
    let (held, most, arrived) = (
        tarpit.held.clone(),
        tarpit.most.clone(),
        tarpit.arrived.clone(),
    );
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (held, most, arrived) = (held.clone(), most.clone(), arrived.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                tcp.read_exact(&mut head[..8]).await?;
                let mut len = 8;
                if head[4..8] == CANCEL_CODE.to_be_bytes() {
                    tcp.read_exact(&mut head[8..]).await?;
                    len = 16;
                    if head[8..12] == FLOOD_PID.to_be_bytes() {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let mut sink = Vec::new();
                        let _ = tcp.read_to_end(&mut sink).await;
                        held.fetch_sub(1, Ordering::SeqCst);
                        return Ok(());
                    }
                }
                let mut pg = tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await?;
                pg.write_all(&head[..len]).await?;
                tokio::io::copy_bidirectional(&mut tcp, &mut pg).await?;
                std::io::Result::Ok(())
            });
        }
    });
    tarpit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancel_requests_is_bounded_and_other_clients_cancels_still_work() {
    let _serial = SERIAL.lock().await;
    let pg_port = stack().pg_port.expect("embedded Postgres");
    let tarpit = cancel_tarpit(pg_port).await;
    let proxy = Proxy::spawn(
        "cancel-flood",
        &[
            "--upstream",
            &format!("postgres://127.0.0.1:{}", tarpit.port),
            "--upstream-sslmode",
            "disable",
            "--max-unauthenticated-per-source",
            "8",
            "--startup-timeout",
            "2",
        ],
    );
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&CANCEL_CODE.to_be_bytes());
    cancel.extend_from_slice(&FLOOD_PID.to_be_bytes());
    cancel.extend_from_slice(&7u32.to_be_bytes());
    let stop = Arc::new(AtomicBool::new(false));
    let (forwarded, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (cancel, stop, port) = (cancel.clone(), stop.clone(), proxy.port);
            let (forwarded, refused) = (forwarded.clone(), refused.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let mut conn = connect_from("127.0.0.1", port).await;
                    let _ = conn.write_all(&cancel).await;
                    let got = answer(&mut conn, Duration::from_secs(5)).await;
                    match first_error(&got) {
                        None => forwarded.fetch_add(1, Ordering::SeqCst),
                        Some((severity, code)) => {
                            assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "53300"));
                            refused.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tarpit.held.load(Ordering::SeqCst) < 8 {
        assert!(
            Instant::now() < deadline,
            "the flood never filled its share"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Another address connects, starts a long query, and cancels it: all during the flood.
    let client = session_from("127.0.0.2", proxy.port).await;
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    token
        .cancel_query_raw(
            connect_from("127.0.0.2", proxy.port).await,
            tokio_postgres::NoTls,
        )
        .await
        .expect("cancel sent");
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the query was cancelled in time")
        .expect("task")
        .expect_err("the query must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < Duration::from_secs(5));

    stop.store(true, Ordering::SeqCst);
    for flooder in flooders {
        flooder.await.expect("flooder");
    }
    let (forwarded, refused) = (
        forwarded.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    );
    assert!(
        tarpit.most.load(Ordering::SeqCst) <= 8,
        "{} flood cancels held upstream at once",
        tarpit.most.load(Ordering::SeqCst)
    );
    assert!(refused >= 100, "forwarded {forwarded}, refused {refused}");
    // Held ones end at the startup deadline, and every forwarded one reached the tarpit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tarpit.held.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "held cancels outlived the deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tarpit.arrived.load(Ordering::SeqCst), forwarded);
}
