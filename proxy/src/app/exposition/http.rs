//! The HTTP endpoint on `--metrics-addr`: `/metrics`, `/healthz` and `/readyz`, one request per
//! connection. What a client can make it hold is bounded: a request head of at most
//! [`MAX_HEAD`] bytes (a longer one gets `431` and the connection closed), [`READ_TIMEOUT`] to
//! send it, [`WRITE_TIMEOUT`] to take the answer, and [`MAX_CONNECTIONS`] connections at once.
//! At that limit a new connection takes the place of the oldest one still sending its head
//! (so idle connections cannot lock a scraper out), or is closed at once when every one is
//! already being answered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::{render, BackendMetrics};
use crate::metrics::Metrics;

/// Most bytes of a request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has from connecting to the end of its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What produces the backends' metrics for `/metrics`.
pub type Backends = Arc<dyn Fn() -> BackendMetrics + Send + Sync>;

/// Connections still sending their head, oldest first: each holds its connection slot here,
/// so that the accept loop can hand it to a newer connection (dropping the sender ends it).
#[derive(Default)]
struct Waiting {
    next_id: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>, OwnedSemaphorePermit)>,
}

type Shared = Arc<Mutex<Waiting>>;

fn lock(waiting: &Shared) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>, backends: Backends) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting: Shared = Arc::default();
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors, most likely: do not spin.
                tracing::debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match lock(&waiting).queue.pop_front() {
                // Its task sees the sender dropped and closes its connection.
                Some((_, evicted, permit)) => {
                    drop(evicted);
                    permit
                }
                None => {
                    drop(socket);
                    continue;
                }
            },
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = lock(&waiting);
            w.next_id += 1;
            let id = w.next_id;
            w.queue.push_back((id, tx, permit));
            id
        };
        let request = Request {
            metrics: metrics.clone(),
            backends: backends.clone(),
            waiting: waiting.clone(),
            id,
        };
        tokio::spawn(request.handle(socket, rx));
    }
}

/// One connection's request.
struct Request {
    metrics: Arc<Metrics>,
    backends: Backends,
    waiting: Shared,
    id: u64,
}

/// How a request head ended.
enum Head {
    /// The request target (path) of a complete head.
    Complete(String),
    TooLarge,
    Closed,
}

impl Request {
    async fn handle(self, mut socket: TcpStream, evicted: oneshot::Receiver<()>) {
        let head = tokio::select! {
            head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut socket)) => head,
            _ = evicted => return,
        };
        // Take the slot back from the queue; gone means a newer connection took it.
        let permit = {
            let mut w = lock(&self.waiting);
            let Some(at) = w.queue.iter().position(|(id, ..)| *id == self.id) else {
                return;
            };
            w.queue.remove(at).map(|(_, _, permit)| permit)
        };
        let (status, body) = match head {
            Ok(Head::Complete(path)) => self.answer(&path),
            Ok(Head::TooLarge) => (
                "431 Request Header Fields Too Large",
                "request head too large\n".to_owned(),
            ),
            Ok(Head::Closed) | Err(_) => return,
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(response.as_bytes())).await;
        drop(permit);
    }

    fn answer(&self, path: &str) -> (&'static str, String) {
        match path {
            "/metrics" => (
                "200 OK",
                render(&self.metrics.snapshot(), &(self.backends)()),
            ),
            "/healthz" => ("200 OK", "ok\n".to_owned()),
            "/readyz" if self.metrics.is_ready() => ("200 OK", "ready\n".to_owned()),
            "/readyz" => (
                "503 Service Unavailable",
                "upstream unavailable\n".to_owned(),
            ),
            _ => ("404 Not Found", "not found\n".to_owned()),
        }
    }
}

/// Reads up to the blank line that ends the request head, never more than [`MAX_HEAD`] bytes.
async fn read_head(socket: &mut TcpStream) -> Head {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        if let Some(end) = head_end(&buf[..filled]) {
            let head = String::from_utf8_lossy(&buf[..end]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            return Head::Complete(path.to_owned());
        }
        if filled == MAX_HEAD {
            return Head::TooLarge;
        }
        match socket.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => filled += n,
        }
    }
}

/// Where the blank line ending a head starts (`\r\n\r\n`, or `\n\n` from lax clients).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2)
        .position(|w| w == b"\n\n")
        .or_else(|| buf.windows(4).position(|w| w == b"\r\n\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
