//! /healthz and /readyz: readiness follows whether the upstream accepts connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pgml_integration_tests::{free_port, Proxy};

/// The status line of GET `path`, sending the request head in two writes (two packets).
fn status(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes())
        .expect("write");
    stream.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(20));
    stream
        .write_all(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response.lines().next().unwrap_or_default().to_owned()
}

fn wait_for(port: u16, path: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = status(port, path);
        if line.contains(want) || Instant::now() > deadline {
            return line;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn readiness_flips_when_the_upstream_goes_away_and_comes_back() {
    let upstream_port = free_port();
    let upstream = TcpListener::bind(("127.0.0.1", upstream_port)).expect("upstream stand-in");
    let metrics_port = free_port();
    let upstream_url = format!("postgres://127.0.0.1:{upstream_port}");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let proxy = Proxy::spawn(
        "readiness",
        &["--upstream", &upstream_url, "--metrics-addr", &metrics_addr],
    );

    assert!(
        status(metrics_port, "/healthz").contains("200"),
        "{}",
        proxy.log()
    );
    let ready = wait_for(metrics_port, "/readyz", "200");
    assert!(ready.contains("200"), "ready: {ready}\n{}", proxy.log());

    drop(upstream);
    let gone = wait_for(metrics_port, "/readyz", "503");
    assert!(
        gone.contains("503"),
        "after the upstream went away: {gone}\n{}",
        proxy.log()
    );
    assert!(status(metrics_port, "/healthz").contains("200"));

    let _back = TcpListener::bind(("127.0.0.1", upstream_port)).expect("upstream back");
    let again = wait_for(metrics_port, "/readyz", "200");
    assert!(
        again.contains("200"),
        "after the upstream came back: {again}"
    );
    assert!(status(metrics_port, "/nope").contains("404"));
}
