//! Prometheus metrics and health endpoints: the proxy's counters (connections, statements by
//! execution path, embeddings, upcalls) plus the engine's snapshot, served as text on
//! `--metrics-addr` with `/metrics`, `/healthz` and `/readyz`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How a statement with a pgml.embed call was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Computed at the proxy and spliced in (path 1).
    Constant,
    /// Prefetched into the session's table (path 2).
    Prefetch,
    /// Left to the shim, answered by upcall (path 3).
    Upcall,
}

/// The proxy's own counters.
#[derive(Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    statements_constant: AtomicU64,
    statements_prefetch: AtomicU64,
    statements_upcall: AtomicU64,
    embeddings: AtomicU64,
    upcalls: AtomicU64,
    ready: AtomicBool,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A session started.
    pub fn connection_opened(&self) {
        inc(&self.connections_total);
        inc(&self.connections_active);
    }

    /// A session ended.
    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A statement with pgml.embed, by path.
    pub fn statement(&self, path: Path) {
        inc(match path {
            Path::Constant => &self.statements_constant,
            Path::Prefetch => &self.statements_prefetch,
            Path::Upcall => &self.statements_upcall,
        });
    }

    /// Distinct embeddings computed for statements.
    pub fn embeddings(&self, n: usize) {
        self.embeddings.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An upcall answered.
    pub fn upcall(&self) {
        inc(&self.upcalls);
    }

    /// Readiness: the upstream answers (set by the health checker).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the proxy is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of the proxy's and the engine's counters.
    pub fn render(&self, engine: Option<&pgml_engine::EngineMetrics>) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "pgml_proxy_connections_total",
            "counter",
            "Client sessions accepted.",
            &[("", get(&self.connections_total) as f64)],
        );
        metric(
            "pgml_proxy_connections_active",
            "gauge",
            "Client sessions open now.",
            &[("", get(&self.connections_active) as f64)],
        );
        metric(
            "pgml_proxy_statements_total",
            "counter",
            "Statements calling pgml.embed, by execution path.",
            &[
                ("{path=\"constant\"}", get(&self.statements_constant) as f64),
                ("{path=\"prefetch\"}", get(&self.statements_prefetch) as f64),
                ("{path=\"upcall\"}", get(&self.statements_upcall) as f64),
            ],
        );
        metric(
            "pgml_proxy_statement_embeddings_total",
            "counter",
            "Distinct embeddings computed for statements (paths 1 and 2).",
            &[("", get(&self.embeddings) as f64)],
        );
        metric(
            "pgml_proxy_upcalls_total",
            "counter",
            "Upcalls answered (path 3).",
            &[("", get(&self.upcalls) as f64)],
        );
        metric(
            "pgml_proxy_ready",
            "gauge",
            "1 when the upstream answers.",
            &[("", u8::from(self.is_ready()) as f64)],
        );
        if let Some(e) = engine {
            metric(
                "pgml_proxy_engine_requests_total",
                "counter",
                "Engine embed requests.",
                &[("", e.requests as f64)],
            );
            metric(
                "pgml_proxy_engine_texts_total",
                "counter",
                "Texts asked of the engine.",
                &[("", e.texts as f64)],
            );
            metric(
                "pgml_proxy_engine_batches_total",
                "counter",
                "Inference batches run.",
                &[("", e.batches as f64)],
            );
            metric(
                "pgml_proxy_engine_batched_texts_total",
                "counter",
                "Texts that went through inference.",
                &[("", e.batched_texts as f64)],
            );
            metric(
                "pgml_proxy_engine_cache_hits_total",
                "counter",
                "Embedding cache hits.",
                &[("", e.cache_hits as f64)],
            );
            metric(
                "pgml_proxy_engine_cache_misses_total",
                "counter",
                "Embedding cache misses.",
                &[("", e.cache_misses as f64)],
            );
            metric(
                "pgml_proxy_engine_cache_bytes",
                "gauge",
                "Bytes held by the embedding cache.",
                &[("", e.cache_bytes as f64)],
            );
            metric(
                "pgml_proxy_engine_inference_seconds_total",
                "counter",
                "Time spent in inference.",
                &[("", e.inference_seconds)],
            );
            metric(
                "pgml_proxy_engine_tokenize_seconds_total",
                "counter",
                "Time spent tokenizing.",
                &[("", e.tokenize_seconds)],
            );
            metric(
                "pgml_proxy_engine_loaded_models",
                "gauge",
                "Models loaded now.",
                &[("", e.loaded_models as f64)],
            );
            let mut buckets = Vec::new();
            let mut cumulative = 0u64;
            let labels: Vec<String> = pgml_engine::BATCH_SIZE_BUCKETS
                .iter()
                .map(|b| format!("{{le=\"{b}\"}}"))
                .chain(std::iter::once("{le=\"+Inf\"}".to_owned()))
                .collect();
            for (i, label) in labels.iter().enumerate() {
                cumulative += e.batch_size_buckets.get(i).copied().unwrap_or(0);
                buckets.push((label.as_str(), cumulative as f64));
            }
            metric(
                "pgml_proxy_engine_batch_size_bucket",
                "histogram",
                "Inference batch sizes.",
                &buckets,
            );
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine_metrics: Arc<dyn Fn() -> Option<pgml_engine::EngineMetrics> + Send + Sync>,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let engine_metrics = engine_metrics.clone();
        tokio::spawn(async move {
            // Read up to the blank line that ends the request head (bounded in size and time).
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let head_complete = |b: &[u8]| {
                b.windows(4).any(|w| w == b"\r\n\r\n") || b.windows(2).any(|w| w == b"\n\n")
            };
            while !head_complete(&buf) && buf.len() < 16 * 1024 {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    socket.read(&mut chunk),
                )
                .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let n = buf.len();
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render(engine_metrics().as_ref())),
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                "/readyz" if metrics.is_ready() => ("200 OK", "ready\n".to_owned()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "upstream unavailable\n".to_owned(),
                ),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_counted_by_path() {
        let m = Metrics::default();
        m.statement(Path::Constant);
        m.statement(Path::Upcall);
        m.statement(Path::Upcall);
        let text = m.render(None);
        assert!(text.contains("pgml_proxy_statements_total{path=\"constant\"} 1"));
        assert!(text.contains("pgml_proxy_statements_total{path=\"upcall\"} 2"));
        assert!(text.contains("# TYPE pgml_proxy_connections_total counter"));
    }
}
