//! `doctor`'s check of the `--remote-model` routes: each route as configured (URL without its
//! password) and whether its server answers (`GET {base}/models` on an OpenAI-compatible
//! server, `/health` on text-embeddings-inference), within a timeout. The token is sent from
//! PGML_PROXY_REMOTE_TOKEN and never shown.

use std::time::Duration;

use super::{Report, Status};
use crate::app::args::RemoteArgs;
use crate::net::url::redact_url;

/// How long one server may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One line per route, in the order given; a route whose server does not answer is MISSING.
pub(super) async fn remote_routes(report: &mut Report, remote: &RemoteArgs) {
    let specs = &remote.remote_model;
    if specs.is_empty() {
        report.line(
            "remote models",
            Status::Note,
            "none (--remote-model NAME=URL routes pgml.embed and pgml.transform to a remote \
             server, e.g. 'meta-llama/*=http://127.0.0.1:8000/v1')",
        );
        return;
    }
    let config = pgml_engine::RemoteConfig {
        timeout: PROBE_TIMEOUT,
        retries: 0,
        ..remote.embed_config()
    };
    for spec in specs {
        let (name, url) = match pgml_engine::parse_remote_route(spec) {
            Ok(route) => route,
            Err(e) => {
                report.line("remote model", Status::Missing, &e.to_string());
                continue;
            }
        };
        let shown = redact_url(&url);
        let config = config.clone();
        let probe = tokio::task::spawn_blocking(move || pgml_engine::probe_route(&url, &config));
        // ureq's timeout bounds the probe; this only covers a thread that never returns.
        let answered =
            tokio::time::timeout(PROBE_TIMEOUT * 2 + Duration::from_secs(1), probe).await;
        match answered {
            Ok(Ok(Ok(what))) => report.line(
                "remote model",
                Status::Ok,
                &format!("{name} -> {shown}: {what}"),
            ),
            Ok(Ok(Err(e))) => {
                report.line(
                    "remote model",
                    Status::Missing,
                    &format!("{name} -> {shown}: {e}"),
                );
                report.more(
                    "fix: start the server or correct the URL (an OpenAI-compatible base such as \
                     http://HOST:PORT/v1); a 401 means PGML_PROXY_REMOTE_TOKEN is missing or wrong",
                );
            }
            Ok(Err(join)) => report.line(
                "remote model",
                Status::Missing,
                &format!("{name} -> {shown}: the check failed: {join}"),
            ),
            Err(_) => report.line(
                "remote model",
                Status::Missing,
                &format!("{name} -> {shown}: no answer within {PROBE_TIMEOUT:?}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Answers one request with an OpenAI model list; returns the base URL and the request.
    fn models_server() -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            let body = r#"{"object":"list","data":[{"id":"llama-3","object":"model"}]}"#;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, handle)
    }

    #[tokio::test]
    async fn routes_are_listed_with_whether_their_server_answers_and_no_password() {
        let (port, server) = models_server();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut report = Report::default();
        let remote = RemoteArgs {
            remote_model: vec![
                format!("meta-llama/*=http://user:hunter2@127.0.0.1:{port}/v1"),
                format!("gone=http://127.0.0.1:{closed}/v1"),
            ],
            remote_token: None,
            generate_timeout: 300,
        };
        remote_routes(&mut report, &remote).await;
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /v1/models "), "{request}");
        let text = &report.text;
        assert!(
            text.contains("meta-llama/* -> http://user:***@127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("lists 1 model(s): llama-3"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("gone -> ") && text.contains("MISSING"),
            "{text}"
        );
        assert_eq!(report.problems, 1);
    }
}
