//! The listener's tests: deadlines, admission limits, the client buffer budget and channel
//! binding, each through a real relay in front of a scripted upstream.

use super::*;
use crate::net::messages::startup::StartupMessage;
use crate::session::hook::Passthrough;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the proxy closes; what it sent.
async fn until_closed(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer));
    read.await.expect("closed by the proxy").expect("read");
    answer
}

/// The relay (Passthrough) in front of 127.0.0.1:`upstream_port` with `limits`: its
/// address, the stop signal and its task.
async fn start_relay(
    upstream_port: u16,
    limits: SessionLimits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = RelayConfig {
        upstream: Upstream::new("127.0.0.1", upstream_port, Default::default()).unwrap(),
        tls: None,
        max_connections: 10,
        shutdown_timeout: Duration::from_secs(1),
        relay_threads: 2,
        relay_pinning: true,
        relay_core: true,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(run_with_limits(
        listener,
        config,
        limits,
        Passthrough,
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop, proxy)
}

#[tokio::test]
async fn clients_stalling_before_or_during_authentication_are_closed_at_the_deadline() {
    // An upstream that accepts and never answers: authentication cannot finish.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let limits = SessionLimits {
        authentication_timeout: Duration::from_millis(300),
        ..SessionLimits::default()
    };
    let (addr, stop, proxy) = start_relay(upstream_port, limits).await;

    let started = std::time::Instant::now();
    let mut nothing = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let startup = StartupMessage {
        version: 196_608,
        params: vec![("user".into(), "u".into())],
    };
    stalled.write_all(&startup.encode()).await.unwrap();
    assert!(until_closed(&mut nothing).await.is_empty());
    let answer = until_closed(&mut stalled).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("C08P01"), "{text}");
    assert!(
        text.contains("canceling authentication due to timeout"),
        "{text}"
    );

    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
    held.abort();
}

/// A connection to `addr` from `source` (any 127/8 address is this host's loopback).
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the proxy turned `conn` away: a FATAL 53300 and the close at once.
async fn turned_away(conn: &mut tokio::net::TcpStream) -> bool {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(300), conn.read_to_end(&mut answer));
    match read.await {
        Err(_) => false,
        Ok(read) => {
            read.expect("read");
            let text = String::from_utf8_lossy(&answer);
            assert!(text.contains("SFATAL") && text.contains("C53300"), "{text}");
            true
        }
    }
}

#[tokio::test]
async fn an_idle_socket_is_closed_at_the_startup_deadline_and_an_authenticating_one_is_not() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let limits = SessionLimits {
        startup_timeout: Duration::from_millis(300),
        authentication_timeout: Duration::from_secs(2),
        ..SessionLimits::default()
    };
    let (addr, stop, proxy) = start_relay(upstream_port, limits).await;
    let started = std::time::Instant::now();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut authenticating = tokio::net::TcpStream::connect(addr).await.unwrap();
    let startup = StartupMessage {
        version: 196_608,
        params: vec![("user".into(), "u".into())],
    };
    authenticating.write_all(&startup.encode()).await.unwrap();
    assert!(until_closed(&mut idle).await.is_empty());
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(250) && idle_for < Duration::from_millis(1500),
        "{idle_for:?}"
    );
    let text = String::from_utf8_lossy(&until_closed(&mut authenticating).await).into_owned();
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text.contains("canceling authentication due to timeout"),
        "{text}"
    );

    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
    held.abort();
}

#[tokio::test]
async fn over_the_unauthenticated_limits_connections_are_turned_away_and_other_sources_served() {
    let limits = SessionLimits {
        pre_auth: PreAuthLimits {
            total: 5,
            per_source: 3,
        },
        ..SessionLimits::default()
    };
    let (addr, stop, proxy) = start_relay(welcoming_upstream().await, limits).await;
    // A source that floods gets its share and no more; each extra socket is closed at once.
    let mut flood = Vec::new();
    for _ in 0..3 {
        flood.push(connect_from("127.0.0.1", addr).await);
    }
    for _ in 0..20 {
        assert!(turned_away(&mut connect_from("127.0.0.1", addr).await).await);
    }
    for conn in &mut flood {
        assert!(!turned_away(conn).await, "held while within the limit");
    }
    // Another source is still served, and once authenticated it gives its place back.
    let mut client = connect_from("127.0.0.2", addr).await;
    let startup = StartupMessage {
        version: 196_608,
        params: vec![("user".into(), "u".into())],
    };
    client.write_all(&startup.encode()).await.unwrap();
    let mut welcome = [0u8; 15];
    client.read_exact(&mut welcome).await.unwrap();
    assert_eq!(welcome[0], b'R');
    let _more = [
        connect_from("127.0.0.3", addr).await,
        connect_from("127.0.0.3", addr).await,
    ];
    // 3 + 2 not yet authenticated: the total is reached, whatever the source.
    assert!(turned_away(&mut connect_from("127.0.0.4", addr).await).await);
    // The flood's sockets closing give their places back.
    drop(flood);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut conn = connect_from("127.0.0.1", addr).await;
        if !turned_away(&mut conn).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "places not given back"
        );
    }

    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancel_requests_are_held_to_the_limits_and_cut_at_the_startup_deadline() {
    // An upstream that takes CancelRequests and never closes them: when each arrives
    // (true) and when the proxy gives up on it (false).
    let tarpit = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = tarpit.local_addr().unwrap().port();
    let (event, mut events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = tarpit.accept().await {
            let event = event.clone();
            tokio::spawn(async move {
                let mut packet = [0u8; 16];
                tcp.read_exact(&mut packet).await?;
                let _ = event.send((true, std::time::Instant::now()));
                let mut sink = Vec::new();
                tcp.read_to_end(&mut sink).await?;
                let _ = event.send((false, std::time::Instant::now()));
                std::io::Result::Ok(())
            });
        }
    });
    let limits = SessionLimits {
        startup_timeout: Duration::from_secs(1),
        pre_auth: PreAuthLimits {
            total: 100,
            per_source: 2,
        },
        ..SessionLimits::default()
    };
    let (addr, stop, proxy) = start_relay(upstream_port, limits).await;
    let mut body = 80_877_102u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 7, 1, 2, 3, 4]);
    let cancel = crate::net::messages::startup::encode_cancel(&body);
    // The client's side of a CancelRequest closes at once, forwarded or not (Postgres
    // answers none); the forwarding holds its unauthenticated place until it ends.
    let cancel_from = |source: &'static str| {
        let cancel = cancel.clone();
        async move {
            let mut conn = connect_from(source, addr).await;
            let _ = conn.write_all(&cancel).await;
            let answer = until_closed(&mut conn).await;
            let text = String::from_utf8_lossy(&answer).into_owned();
            assert!(answer.is_empty() || text.contains("C53300"), "{text}");
            !answer.is_empty()
        }
    };
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..30 {
        refused += usize::from(cancel_from("127.0.0.1").await);
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "too slow to test"
    );
    assert_eq!(refused, 28, "2 forwarded at a time from one source");
    assert!(
        !cancel_from("127.0.0.2").await,
        "another source's cancel is forwarded"
    );
    let mut arrived = Vec::new();
    let mut cut = Vec::new();
    while let Ok(Some((arrival, at))) =
        tokio::time::timeout(Duration::from_secs(3), events.recv()).await
    {
        if arrival {
            arrived.push(at);
        } else {
            cut.push(at.duration_since(started));
        }
        if cut.len() == 3 {
            break;
        }
    }
    assert_eq!(
        arrived.len(),
        3,
        "only the admitted cancels reach the upstream"
    );
    assert_eq!(cut.len(), 3, "each forwarding ends at the startup deadline");
    assert!(
        cut.iter().all(|&at| at >= Duration::from_millis(900)),
        "{cut:?}"
    );
    // Their places are back.
    assert!(!cancel_from("127.0.0.1").await);

    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
}

/// An upstream that lets every client in (AuthenticationOk, ReadyForQuery) and then only
/// reads.
async fn welcoming_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                tcp.read_exact(&mut len).await?;
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                tcp.read_exact(&mut startup).await?;
                tcp.write_all(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I").await?;
                let mut sink = Vec::new();
                tcp.read_to_end(&mut sink).await
            });
        }
    });
    port
}

#[tokio::test]
async fn a_message_beyond_a_sessions_share_of_the_client_buffer_budget_ends_its_session_with_54000()
{
    let limits = SessionLimits {
        client_buffer_budget: 1024 * 1024,
        ..SessionLimits::default()
    };
    let (addr, stop, proxy) = start_relay(welcoming_upstream().await, limits).await;
    let login = || async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let startup = StartupMessage {
            version: 196_608,
            params: vec![("user".into(), "u".into())],
        };
        conn.write_all(&startup.encode()).await.unwrap();
        let mut welcome = [0u8; 15];
        conn.read_exact(&mut welcome).await.unwrap();
        conn
    };
    let mut greedy = login().await;
    let mut query = vec![b'Q'];
    query.extend_from_slice(&(2u32 * 1024 * 1024).to_be_bytes());
    query.extend_from_slice(&[b' '; 1024]);
    greedy.write_all(&query).await.unwrap();
    let text = String::from_utf8_lossy(&until_closed(&mut greedy).await).into_owned();
    // One session may hold a quarter of the budget (session::budget): 256 KiB here.
    assert!(text.contains("C54000"), "{text}");
    assert!(text.contains("--client-buffer-budget-mb"), "{text}");

    // A message that fits goes through, and its bytes are given back afterwards.
    let mut modest = login().await;
    let mut query = vec![b'Q'];
    let sql = vec![b' '; 200 * 1024];
    query.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
    query.extend_from_slice(&sql);
    query.push(0);
    for _ in 0..3 {
        modest.write_all(&query).await.unwrap();
    }
    modest.write_all(b"X\0\0\0\x04").await.unwrap();
    assert!(until_closed(&mut modest).await.is_empty());

    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_tls_clients_scram_answer_to_a_server_offering_binding_gets_a_fatal_that_says_why() {
    // An upstream reached over TLS offers SCRAM-SHA-256-PLUS; it never gets to answer.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                tcp.read_exact(&mut len).await?;
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                tcp.read_exact(&mut startup).await?;
                let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
                let mut sasl = vec![b'R'];
                sasl.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                sasl.extend_from_slice(body);
                tcp.write_all(&sasl).await?;
                let mut sink = Vec::new();
                tcp.read_to_end(&mut sink).await
            });
        }
    });
    let (addr, stop, proxy) = start_relay(upstream_port, SessionLimits::default()).await;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let startup = StartupMessage {
        version: 196_608,
        params: vec![("user".into(), "u".into())],
    };
    conn.write_all(&startup.encode()).await.unwrap();
    let offered = b"\0\0\0\x0aSCRAM-SHA-256\0\0";
    let mut sasl = vec![0u8; 5 + offered.len()];
    conn.read_exact(&mut sasl).await.unwrap();
    assert_eq!(
        &sasl[5..],
        offered,
        "the client is offered SCRAM-SHA-256 only"
    );
    let first = b"y,,n=,r=nonce";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    let mut initial = vec![b'p'];
    initial.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    initial.extend_from_slice(&body);
    conn.write_all(&initial).await.unwrap();
    let text = String::from_utf8_lossy(&until_closed(&mut conn).await).into_owned();
    assert!(text.contains("C08P01"), "{text}");
    assert!(text.contains("channel binding cannot pass"), "{text}");
    assert!(text.contains("channel_binding=disable"), "{text}");

    let _ = stop.send(());
    proxy.await.unwrap().unwrap();
}
