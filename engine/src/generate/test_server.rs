//! A small HTTP/1.1 server for the engine's unit tests, on 127.0.0.1:0 with a thread per
//! connection: it records every request (method, path, headers, JSON body) and answers what
//! the test's handler decides from the request: JSON with any status, or server-sent events
//! written one at a time with a gap, noting whether a write failed (the client went away).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request as the server read it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
pub(crate) enum Reply {
    /// A JSON body with this status, after a delay.
    Json {
        status: u16,
        body: Value,
        delay: Duration,
    },
    /// `text/event-stream`: each string written as it is (so a test controls framing), with
    /// `gap` before each.
    Events { events: Vec<String>, gap: Duration },
    /// Headers promising a stream, then nothing for this long, then close.
    Stall(Duration),
}

/// What the server saw, shared with the test.
#[derive(Default)]
pub(crate) struct Seen {
    pub requests: Mutex<Vec<Recorded>>,
    /// Requests being answered right now, and the most at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Event writes that succeeded, and writes that failed (the client closed).
    pub events_written: AtomicUsize,
    pub write_failures: AtomicUsize,
    /// When the first event was about to be written.
    pub first_event_at: Mutex<Option<Instant>>,
}

impl Seen {
    /// A copy of the requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A running server; it lives as long as the test process (threads are not joined).
pub(crate) struct TestServer {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Seen>,
}

impl TestServer {
    /// Starts a server answering with `handler`.
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = Arc::clone(&shared);
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || serve(stream, &seen, &*handler));
            }
        });
        TestServer { addr, seen }
    }

    /// The OpenAI API base, `http://127.0.0.1:PORT/v1`.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn serve(stream: TcpStream, seen: &Seen, handler: &Handler) {
    let Ok(request) = read_request(&stream) else {
        return;
    };
    seen.requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(request.clone());
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut flight = InFlight(Some(&seen.in_flight));
    answer(stream, seen, handler(&request), &mut flight);
}

/// A request's place in `Seen::in_flight`, given up once: before a JSON answer is written (a
/// client that has read it may send its next request before this thread runs again, which
/// would count one request too many), else when the answer is done.
struct InFlight<'a>(Option<&'a AtomicUsize>);

impl InFlight<'_> {
    fn end(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Recorded> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn answer(mut stream: TcpStream, seen: &Seen, reply: Reply, flight: &mut InFlight<'_>) {
    match reply {
        Reply::Json {
            status,
            body,
            delay,
        } => {
            std::thread::sleep(delay);
            flight.end();
            let body = body.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Reply::Events { events, gap } => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        connection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            for event in events {
                std::thread::sleep(gap);
                {
                    // Noted before the write, so a client that reads it at once finds it set.
                    let mut first = seen
                        .first_event_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(Instant::now);
                }
                if stream
                    .write_all(event.as_bytes())
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    seen.write_failures.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                seen.events_written.fetch_add(1, Ordering::SeqCst);
            }
        }
        Reply::Stall(for_how_long) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        connection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            std::thread::sleep(for_how_long);
        }
    }
}

/// A chat chunk event carrying `content`.
pub(crate) fn chat_event(content: &str) -> String {
    let chunk = serde_json::json!({"id": "c", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

/// A completions chunk event carrying `text`, with `finish` as its finish_reason.
pub(crate) fn text_event(text: &str, finish: Option<&str>) -> String {
    let chunk = serde_json::json!({"id": "c", "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}
