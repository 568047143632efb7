//! The Prometheus text exposition of the proxy's, the engine's and the remote backends'
//! metrics, and the HTTP endpoint that serves it on `--metrics-addr` with `/metrics`,
//! `/healthz` and `/readyz`. Names start with `pgml_proxy_`; counters end in `_total`,
//! latency histograms in `_seconds`. The endpoint itself, with its bounds, is in `http`.

use std::fmt::Write as _;

use pgml_engine::{EngineMetrics, HistogramSnapshot, RemoteMetrics, BATCH_SIZE_BUCKETS};

use crate::metrics::ProxySnapshot;

mod http;

pub use http::serve_http;

/// What the embedding backends report: the local engine's counters, each remote backend's.
#[derive(Debug, Clone, Default)]
pub struct BackendMetrics {
    /// The local engine's snapshot.
    pub engine: Option<EngineMetrics>,
    /// Per (backend, model) remote requests.
    pub remote: Vec<RemoteMetrics>,
}

/// Builds the text: one `# HELP`/`# TYPE` per family, then its samples.
#[derive(Default)]
struct Text {
    out: String,
}

/// `name="value"` pairs with Prometheus escaping (model names come from SQL).
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{name}=\"{value}\"");
    }
    out
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        let set = labels(pairs);
        if set.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{set}}} {value}");
        }
    }

    /// One unlabelled sample in its own family.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One unlabelled histogram in its own family.
    fn single_histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        self.histogram(name, &[], h);
    }

    /// `_bucket` (cumulative, `le` last among the labels), `_sum` and `_count`.
    fn histogram(&mut self, name: &str, pairs: &[(&str, &str)], h: &HistogramSnapshot) {
        let set = labels(pairs);
        let sep = if set.is_empty() { "" } else { "," };
        for (le, count) in h.cumulative() {
            let _ = writeln!(self.out, "{name}_bucket{{{set}{sep}le=\"{le}\"}} {count}");
        }
        self.sample(&format!("{name}_sum"), pairs, h.sum_seconds);
        self.sample(&format!("{name}_count"), pairs, h.count() as f64);
    }
}

/// The whole exposition.
pub fn render(proxy: &ProxySnapshot, backends: &BackendMetrics) -> String {
    let mut t = Text::default();
    render_proxy(&mut t, proxy);
    if let Some(e) = &backends.engine {
        render_engine(&mut t, e);
    }
    render_remote(&mut t, &backends.remote);
    t.out
}

fn render_proxy(t: &mut Text, p: &ProxySnapshot) {
    let counter = "counter";
    t.single(
        "pgml_proxy_connections_total",
        counter,
        "Client sessions accepted.",
        p.connections_total as f64,
    );
    t.single(
        "pgml_proxy_connections_active",
        "gauge",
        "Client sessions open now.",
        p.connections_active as f64,
    );
    let name = "pgml_proxy_connections_refused_total";
    t.family(name, counter, "Connections refused, by reason.");
    for (reason, n) in &p.refused {
        t.sample(name, &[("reason", reason.label())], *n as f64);
    }
    t.single(
        "pgml_proxy_upstream_connect_errors_total",
        counter,
        "Sessions that could not connect to the upstream server.",
        p.upstream_connect_errors as f64,
    );
    t.single(
        "pgml_proxy_client_protocol_errors_total",
        counter,
        "Sessions ended because the client broke the wire protocol (08P01).",
        p.client_protocol_errors as f64,
    );
    let name = "pgml_proxy_statements_total";
    t.family(
        name,
        counter,
        "Statements calling pgml.embed, by execution path.",
    );
    for (path, n) in p.statements.iter().skip(1) {
        t.sample(name, &[("path", path.label())], *n as f64);
    }
    let name = "pgml_proxy_statement_duration_seconds";
    t.family(
        name,
        "histogram",
        "From a statement's first message to its ReadyForQuery, by the slowest path it took \
         (an extended-protocol batch up to its Sync counts as one).",
    );
    for (path, h) in &p.statement_seconds {
        t.histogram(name, &[("path", path.label())], h);
    }
    t.single(
        "pgml_proxy_statement_embeddings_total",
        counter,
        "Distinct embeddings computed for statements (paths 1 and 2).",
        p.embeddings as f64,
    );
    let name = "pgml_proxy_embedding_duration_seconds";
    t.family(
        name,
        "histogram",
        "One embed call (cache, batcher queue and inference, or the remote backend), by model.",
    );
    for (model, h) in &p.embedding_seconds {
        t.histogram(name, &[("model", model)], h);
    }
    t.single(
        "pgml_proxy_upcalls_total",
        counter,
        "Upcalls answered (path 3).",
        p.upcalls as f64,
    );
    t.single_histogram(
        "pgml_proxy_upcall_duration_seconds",
        "From the shim's upcall NOTICE to its answer committed (path 3).",
        &p.upcall_seconds,
    );
    t.single(
        "pgml_proxy_ready",
        "gauge",
        "1 when the upstream answers.",
        u8::from(p.ready) as f64,
    );
}

fn render_engine(t: &mut Text, e: &EngineMetrics) {
    let counter = "counter";
    t.single(
        "pgml_proxy_engine_requests_total",
        counter,
        "Engine embed requests.",
        e.requests as f64,
    );
    t.single(
        "pgml_proxy_engine_texts_total",
        counter,
        "Texts asked of the engine.",
        e.texts as f64,
    );
    t.single(
        "pgml_proxy_engine_batches_total",
        counter,
        "Inference batches run.",
        e.batches as f64,
    );
    t.single(
        "pgml_proxy_engine_batched_texts_total",
        counter,
        "Texts that went through inference.",
        e.batched_texts as f64,
    );
    t.single(
        "pgml_proxy_engine_cache_hits_total",
        counter,
        "Embedding cache hits (local and remote models).",
        e.cache_hits as f64,
    );
    t.single(
        "pgml_proxy_engine_cache_misses_total",
        counter,
        "Embedding cache misses (local and remote models).",
        e.cache_misses as f64,
    );
    t.single(
        "pgml_proxy_engine_cache_bytes",
        "gauge",
        "Bytes held by the embedding cache.",
        e.cache_bytes as f64,
    );
    t.single(
        "pgml_proxy_engine_inference_seconds_total",
        counter,
        "Time spent in inference.",
        e.inference_seconds,
    );
    t.single(
        "pgml_proxy_engine_tokenize_seconds_total",
        counter,
        "Time spent tokenizing.",
        e.tokenize_seconds,
    );
    t.single(
        "pgml_proxy_engine_loaded_models",
        "gauge",
        "Models loaded now.",
        e.loaded_models as f64,
    );
    t.single_histogram(
        "pgml_proxy_engine_queue_wait_seconds",
        "From a job's arrival in the batcher's queue to the start of its batch.",
        &e.queue_wait,
    );
    let name = "pgml_proxy_engine_batch_size";
    t.family(name, "histogram", "Inference batch sizes.");
    let bounds = BATCH_SIZE_BUCKETS
        .iter()
        .map(u64::to_string)
        .chain(std::iter::once("+Inf".to_owned()));
    let mut cumulative = 0u64;
    for (i, le) in bounds.enumerate() {
        cumulative += e.batch_size_buckets.get(i).copied().unwrap_or(0);
        t.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
    }
    t.sample(&format!("{name}_sum"), &[], e.batched_texts as f64);
    t.sample(&format!("{name}_count"), &[], e.batches as f64);
}

/// A counter of `RemoteMetrics`: name, help, and how to read it.
type RemoteCounter = (&'static str, &'static str, fn(&RemoteMetrics) -> u64);

fn render_remote(t: &mut Text, remote: &[RemoteMetrics]) {
    let families: [RemoteCounter; 3] = [
        (
            "pgml_proxy_remote_requests_total",
            "HTTP requests sent to remote embedding backends (retries included).",
            |r| r.requests,
        ),
        (
            "pgml_proxy_remote_retries_total",
            "Requests to remote backends that retried a failed one.",
            |r| r.retries,
        ),
        (
            "pgml_proxy_remote_errors_total",
            "Remote embedding requests that failed after their retries.",
            |r| r.errors,
        ),
    ];
    for (name, help, value) in families {
        t.family(name, "counter", help);
        for r in remote {
            let pairs = [("model", r.model.as_str()), ("backend", r.backend.as_str())];
            t.sample(name, &pairs, value(r) as f64);
        }
    }
    let name = "pgml_proxy_remote_request_duration_seconds";
    t.family(
        name,
        "histogram",
        "One HTTP request to a remote embedding backend.",
    );
    for r in remote {
        let pairs = [("model", r.model.as_str()), ("backend", r.backend.as_str())];
        t.histogram(name, &pairs, &r.latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Path};
    use std::time::Duration;

    #[test]
    fn statements_are_counted_and_timed_by_path() {
        let m = Metrics::default();
        m.statement(Path::Constant);
        m.statement(Path::Upcall);
        m.statement(Path::Upcall);
        m.statement_latency(Path::Passthrough, Duration::from_micros(300));
        m.statement_latency(Path::Upcall, Duration::from_millis(30));
        let text = render(&m.snapshot(), &BackendMetrics::default());
        assert!(text.contains("pgml_proxy_statements_total{path=\"constant\"} 1"));
        assert!(text.contains("pgml_proxy_statements_total{path=\"upcall\"} 2"));
        assert!(!text.contains("pgml_proxy_statements_total{path=\"passthrough\"}"));
        assert!(text.contains("# TYPE pgml_proxy_connections_total counter"));
        assert!(text.contains(
            "pgml_proxy_statement_duration_seconds_bucket{path=\"passthrough\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "pgml_proxy_statement_duration_seconds_bucket{path=\"upcall\",le=\"0.025\"} 0"
        ));
        assert!(text.contains(
            "pgml_proxy_statement_duration_seconds_bucket{path=\"upcall\",le=\"0.05\"} 1"
        ));
        assert!(text.contains("pgml_proxy_statement_duration_seconds_count{path=\"upcall\"} 1"));
        assert!(text.contains("pgml_proxy_connections_refused_total{reason=\"auth_failure\"} 0"));
        assert!(text.contains("pgml_proxy_upcall_duration_seconds_bucket{le=\"+Inf\"} 0"));
        assert_eq!(
            text.matches("# TYPE pgml_proxy_statement_duration_seconds histogram")
                .count(),
            1,
            "one family header for all its series"
        );
    }

    #[test]
    fn label_values_from_sql_are_escaped() {
        let m = Metrics::default();
        m.embedding_latency("evil\"} 1\nx{a=\"\\", Duration::from_millis(2), true);
        let text = render(&m.snapshot(), &BackendMetrics::default());
        assert!(
            text.contains(
                "pgml_proxy_embedding_duration_seconds_count{model=\"evil\\\"} 1\\nx{a=\\\"\\\\\"} 1"
            ),
            "{text}"
        );
        assert!(text
            .lines()
            .all(|l| l.starts_with("pgml_proxy_") || l.starts_with('#')));
    }

    #[test]
    fn engine_and_remote_series_are_rendered() {
        let remote = RemoteMetrics {
            backend: "http://tei:8080/embed".into(),
            model: "acme/m".into(),
            requests: 5,
            retries: 2,
            errors: 1,
            latency: HistogramSnapshot::default(),
        };
        let backends = BackendMetrics {
            engine: Some(EngineMetrics {
                batches: 3,
                batched_texts: 10,
                batch_size_buckets: vec![1, 0, 2, 0, 0, 0, 0, 0, 0],
                ..EngineMetrics::default()
            }),
            remote: vec![remote],
        };
        let text = render(&Metrics::default().snapshot(), &backends);
        let labels = "{model=\"acme/m\",backend=\"http://tei:8080/embed\"}";
        assert!(text.contains(&format!("pgml_proxy_remote_requests_total{labels} 5")));
        assert!(text.contains(&format!("pgml_proxy_remote_retries_total{labels} 2")));
        assert!(text.contains(&format!("pgml_proxy_remote_errors_total{labels} 1")));
        assert!(text.contains(
            "pgml_proxy_remote_request_duration_seconds_bucket{model=\"acme/m\",backend=\"http://tei:8080/embed\",le=\"+Inf\"} 0"
        ));
        assert!(text.contains("pgml_proxy_engine_batch_size_bucket{le=\"4\"} 3"));
        assert!(text.contains("pgml_proxy_engine_batch_size_sum 10"));
        assert!(text.contains("pgml_proxy_engine_batch_size_count 3"));
        assert!(text.contains("pgml_proxy_engine_queue_wait_seconds_count 0"));
    }
}
