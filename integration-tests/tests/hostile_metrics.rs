//! The metrics endpoint bounds what a client can make it hold: a request head over 8 KiB gets
//! 431 (or the connection closed) without the proxy's memory growing by the megabytes sent; idle
//! connections cannot lock a scraper out; a client that sends its head too slowly is closed.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgml_integration_tests::stack;

/// The tests share the stack's metrics endpoint and its connection limit: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    stream
}

/// What the server sent before closing: its bytes, or empty when it reset the connection.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the server neither answered nor closed: {e}"),
    }
}

#[test]
fn a_megabyte_of_headers_is_refused_without_the_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let proxy = stack();
    let port = proxy.metrics_port.expect("metrics port");
    assert!(proxy.http_get("/metrics").contains("pgml_proxy_ready"));
    let before = proxy.peak_rss();
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut stream = connect(port);
                let mut writer = stream.try_clone().expect("clone");
                let sender = std::thread::spawn(move || {
                    let _ = writer.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                    let line = format!("X-Pad-{i}: {}\r\n", "a".repeat(1000));
                    for _ in 0..1024 {
                        if writer.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                    }
                    let _ = writer.write_all(b"\r\n");
                });
                let got = read_until_closed(&mut stream);
                let _ = sender.join();
                String::from_utf8_lossy(&got).into_owned()
            })
        })
        .collect();
    for client in clients {
        let response = client.join().expect("client thread");
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 431"),
            "a 1 MB request head must be refused or closed, got: {}",
            &response[..response.len().min(200)]
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusing took {:?}",
        started.elapsed()
    );
    let grown = proxy.peak_rss().saturating_sub(before);
    assert!(
        grown < 4 * 1024 * 1024,
        "8 clients sending 1 MB of headers grew the proxy's peak RSS by {grown} bytes"
    );
    assert!(proxy.http_get("/metrics").contains("pgml_proxy_ready"));
}

#[test]
fn idle_connections_do_not_lock_out_a_scrape() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let proxy = stack();
    let port = proxy.metrics_port.expect("metrics port");
    let mut idle: Vec<TcpStream> = (0..200).map(|_| connect(port)).collect();
    // Over 64, the oldest ones make room at once rather than waiting out their read timeout.
    let opened = Instant::now();
    for stream in &mut idle[..100] {
        assert!(read_until_closed(stream).is_empty());
    }
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "the oldest idle connections were held {:?}",
        opened.elapsed()
    );
    let started = Instant::now();
    let body = proxy.http_get("/metrics");
    assert!(body.contains("pgml_proxy_ready"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a scrape behind 200 idle connections took {:?}",
        started.elapsed()
    );
    // The endpoint holds at most 64 of them, and none past its 5 s read timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    for stream in &mut idle[100..] {
        assert!(read_until_closed(stream).is_empty());
    }
    assert!(
        Instant::now() < deadline,
        "idle connections outlived the read timeout"
    );
}

#[test]
fn a_slow_head_is_cut_off() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let proxy = stack();
    let port = proxy.metrics_port.expect("metrics port");
    let mut stream = connect(port);
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        .iter()
        .cycle()
        .take(20)
    {
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !closed {
        assert!(read_until_closed(&mut stream).is_empty());
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "a client sending a byte every 500 ms held its connection {:?}",
        started.elapsed()
    );
}
