//! The proxy's own metrics: connections and why some were refused, statements by execution
//! path and their latency, embedding latency by model, upcall round trips, protocol and
//! upstream errors. Atomics and lock-free histograms; the one lock (the model table) is read
//! once per embed call, never on the relay path. `exposition` renders them with the engine's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pgml_engine::{Embedder, EngineError, Histogram, HistogramSnapshot};
use serde_json::Value;

use crate::session::hook::ConnectionEvent;
pub use crate::session::timing::Path;

/// Distinct model labels on the embedding histogram; later models (and calls that failed
/// for a model never served) count under `model="other"`, so clients cannot grow the
/// exposition without bound by naming models.
pub const MAX_MODEL_LABELS: usize = 32;

/// Why a connection was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` sessions were open.
    MaxConnections,
    /// The upstream refused the client's credentials (SQLSTATE class 28).
    AuthFailure,
    /// The upstream refused the startup otherwise (unknown database, too many clients there).
    StartupError,
    /// Turned away at accept: its source had `--max-unauthenticated-per-source` connections
    /// not yet authenticated.
    UnauthenticatedPerSource,
    /// Turned away at accept: `--max-unauthenticated-connections` were not yet authenticated.
    UnauthenticatedTotal,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 5] = [
        Refusal::MaxConnections,
        Refusal::AuthFailure,
        Refusal::StartupError,
        Refusal::UnauthenticatedPerSource,
        Refusal::UnauthenticatedTotal,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::AuthFailure => "auth_failure",
            Refusal::StartupError => "startup_error",
            Refusal::UnauthenticatedPerSource => "unauthenticated_per_source",
            Refusal::UnauthenticatedTotal => "unauthenticated_total",
        }
    }
}

/// The proxy's own counters and histograms.
#[derive(Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    upstream_connect_errors: AtomicU64,
    client_protocol_errors: AtomicU64,
    statements: [AtomicU64; Path::ALL.len()],
    statement_seconds: [Histogram; Path::ALL.len()],
    embeddings: AtomicU64,
    embedding_seconds: ModelHistograms,
    upcalls: AtomicU64,
    upcall_seconds: Histogram,
    ready: AtomicBool,
}

/// One latency histogram per model name (bounded), and one for the rest.
#[derive(Default)]
struct ModelHistograms {
    by_model: RwLock<HashMap<String, Arc<Histogram>>>,
    other: Histogram,
}

impl ModelHistograms {
    fn observe(&self, model: &str, elapsed: Duration, served: bool) {
        let known = {
            let table = self.by_model.read().unwrap_or_else(|p| p.into_inner());
            table.get(model).cloned()
        };
        if let Some(histogram) = known {
            return histogram.observe(elapsed);
        }
        if served {
            let mut table = self.by_model.write().unwrap_or_else(|p| p.into_inner());
            if table.len() < MAX_MODEL_LABELS {
                return table.entry(model.to_owned()).or_default().observe(elapsed);
            }
        }
        self.other.observe(elapsed);
    }

    /// (model, snapshot) sorted by model, then ("other", ...) when anything went there.
    fn snapshot(&self) -> Vec<(String, HistogramSnapshot)> {
        let table = self.by_model.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, HistogramSnapshot)> = table
            .iter()
            .map(|(model, h)| (model.clone(), h.snapshot()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let other = self.other.snapshot();
        if other.count() > 0 {
            out.push(("other".to_owned(), other));
        }
        out
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
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

    /// A connection was refused, failed to reach the upstream or broke the protocol.
    pub fn connection_event(&self, event: ConnectionEvent) {
        match event {
            ConnectionEvent::TooManyConnections => {
                inc(&self.refused[Refusal::MaxConnections as usize])
            }
            ConnectionEvent::StartupRefused { authentication } => {
                let reason = if authentication {
                    Refusal::AuthFailure
                } else {
                    Refusal::StartupError
                };
                inc(&self.refused[reason as usize]);
            }
            ConnectionEvent::Unauthenticated { per_source } => {
                let reason = if per_source {
                    Refusal::UnauthenticatedPerSource
                } else {
                    Refusal::UnauthenticatedTotal
                };
                inc(&self.refused[reason as usize]);
            }
            ConnectionEvent::UpstreamConnectFailed => inc(&self.upstream_connect_errors),
            ConnectionEvent::ClientProtocolError => inc(&self.client_protocol_errors),
        }
    }

    /// A statement with pgml.embed, by path (counted when it is planned).
    pub fn statement(&self, path: Path) {
        inc(&self.statements[path as usize]);
    }

    /// A statement cycle ended (its ReadyForQuery reached the proxy) after `elapsed`.
    pub fn statement_latency(&self, path: Path, elapsed: Duration) {
        self.statement_seconds[path as usize].observe(elapsed);
    }

    /// Distinct embeddings computed for statements.
    pub fn embeddings(&self, n: usize) {
        self.embeddings.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One embed call for `model` took `elapsed`; `served` when it succeeded.
    pub fn embedding_latency(&self, model: &str, elapsed: Duration, served: bool) {
        self.embedding_seconds.observe(model, elapsed, served);
    }

    /// An upcall was answered (or refused) `elapsed` after its NOTICE arrived.
    pub fn upcall(&self, elapsed: Duration) {
        inc(&self.upcalls);
        self.upcall_seconds.observe(elapsed);
    }

    /// Readiness: the upstream answers (set by the health checker).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the proxy is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A point-in-time copy for the exposition.
    pub fn snapshot(&self) -> ProxySnapshot {
        ProxySnapshot {
            connections_total: get(&self.connections_total),
            connections_active: get(&self.connections_active),
            refused: Refusal::ALL.map(|r| (r, get(&self.refused[r as usize]))),
            upstream_connect_errors: get(&self.upstream_connect_errors),
            client_protocol_errors: get(&self.client_protocol_errors),
            statements: Path::ALL.map(|p| (p, get(&self.statements[p as usize]))),
            statement_seconds: Path::ALL
                .map(|p| (p, self.statement_seconds[p as usize].snapshot())),
            embeddings: get(&self.embeddings),
            embedding_seconds: self.embedding_seconds.snapshot(),
            upcalls: get(&self.upcalls),
            upcall_seconds: self.upcall_seconds.snapshot(),
            ready: self.is_ready(),
        }
    }
}

/// The proxy's metrics at one moment.
#[derive(Debug, Clone)]
pub struct ProxySnapshot {
    /// Client sessions accepted.
    pub connections_total: u64,
    /// Client sessions open.
    pub connections_active: u64,
    /// Refused connections, by reason.
    pub refused: [(Refusal, u64); Refusal::ALL.len()],
    /// Sessions that could not reach the upstream.
    pub upstream_connect_errors: u64,
    /// Sessions ended by a client's protocol violation (08P01).
    pub client_protocol_errors: u64,
    /// pgml.embed statements planned, by path (passthrough stays 0).
    pub statements: [(Path, u64); Path::ALL.len()],
    /// Statement cycle latency, by path.
    pub statement_seconds: [(Path, HistogramSnapshot); Path::ALL.len()],
    /// Distinct embeddings computed for statements.
    pub embeddings: u64,
    /// Embed call latency, by model (then "other").
    pub embedding_seconds: Vec<(String, HistogramSnapshot)>,
    /// Upcalls handled.
    pub upcalls: u64,
    /// Upcall round trips.
    pub upcall_seconds: HistogramSnapshot,
    /// Whether the upstream answers.
    pub ready: bool,
}

/// An `Embedder` that times every embed call by model (all paths go through it).
pub struct MeteredEmbedder {
    inner: Arc<dyn Embedder>,
    metrics: Arc<Metrics>,
}

impl MeteredEmbedder {
    /// Times `inner`'s calls into `metrics`.
    pub fn new(inner: Arc<dyn Embedder>, metrics: Arc<Metrics>) -> Self {
        MeteredEmbedder { inner, metrics }
    }
}

#[async_trait::async_trait]
impl Embedder for MeteredEmbedder {
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let started = Instant::now();
        let result = self.inner.embed(model, texts, kwargs).await;
        self.metrics
            .embedding_latency(model, started.elapsed(), result.is_ok());
        result
    }

    async fn embed_in(
        &self,
        partition: &str,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let started = Instant::now();
        let result = self.inner.embed_in(partition, model, texts, kwargs).await;
        self.metrics
            .embedding_latency(model, started.elapsed(), result.is_ok());
        result
    }

    async fn dimension(&self, model: &str, kwargs: &Value) -> Result<usize, EngineError> {
        self.inner.dimension(model, kwargs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_bounded_and_failures_of_unknown_models_go_to_other() {
        let m = Metrics::default();
        let ms = Duration::from_millis(1);
        m.embedding_latency("acme/never-served", ms, false);
        for i in 0..MAX_MODEL_LABELS + 5 {
            m.embedding_latency(&format!("m{i:02}"), ms, true);
        }
        m.embedding_latency("m00", ms, false);
        let s = m.snapshot().embedding_seconds;
        assert_eq!(s.len(), MAX_MODEL_LABELS + 1);
        assert_eq!(s[0].0, "m00");
        assert_eq!(s[0].1.count(), 2, "a known model's failures stay with it");
        let (label, other) = s.last().expect("other");
        assert_eq!((label.as_str(), other.count()), ("other", 6));
    }

    #[test]
    fn connection_events_count_by_reason() {
        let m = Metrics::default();
        m.connection_event(ConnectionEvent::TooManyConnections);
        m.connection_event(ConnectionEvent::StartupRefused {
            authentication: true,
        });
        m.connection_event(ConnectionEvent::StartupRefused {
            authentication: true,
        });
        m.connection_event(ConnectionEvent::UpstreamConnectFailed);
        for per_source in [true, true, true, false] {
            m.connection_event(ConnectionEvent::Unauthenticated { per_source });
        }
        let s = m.snapshot();
        assert_eq!(
            s.refused,
            [
                (Refusal::MaxConnections, 1),
                (Refusal::AuthFailure, 2),
                (Refusal::StartupError, 0),
                (Refusal::UnauthenticatedPerSource, 3),
                (Refusal::UnauthenticatedTotal, 1),
            ]
        );
        assert_eq!(
            (s.upstream_connect_errors, s.client_protocol_errors),
            (1, 0)
        );
    }
}
