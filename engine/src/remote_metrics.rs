//! What the remote backends were asked and how they answered: per (backend, model), HTTP
//! requests sent, retries among them, calls that failed after their retries, and each
//! request's latency. Atomics; the table is consulted once per embed call, not per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::histogram::{Histogram, HistogramSnapshot};

/// A snapshot of one (backend, model)'s remote requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteMetrics {
    /// The URL requests are posted to.
    pub backend: String,
    /// The model name as routed.
    pub model: String,
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Requests that were retries of a failed one.
    pub retries: u64,
    /// Chunks of texts that failed for good (after their retries): errors callers saw.
    pub errors: u64,
    /// Latency of each HTTP request, from send to a parsed body or a failure.
    pub latency: HistogramSnapshot,
}

/// Live counters of one (backend, model).
#[derive(Default)]
pub(crate) struct RemoteStats {
    requests: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

impl RemoteStats {
    /// One HTTP request made (`attempt` counts from 1) that took `elapsed`.
    pub fn request(&self, attempt: u32, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(elapsed);
    }

    /// A chunk failed for good.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of one backend, by model.
#[derive(Default)]
pub(crate) struct RemoteStatsTable {
    by_model: Mutex<HashMap<String, Arc<RemoteStats>>>,
}

impl RemoteStatsTable {
    /// The counters of `model` (created on first use).
    pub fn for_model(&self, model: &str) -> Arc<RemoteStats> {
        let mut table = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(model) {
            Some(stats) => Arc::clone(stats),
            None => {
                let stats = Arc::new(RemoteStats::default());
                table.insert(model.to_owned(), Arc::clone(&stats));
                stats
            }
        }
    }

    /// Snapshots of every model seen, sorted by model; `backend` is the URL, shown without
    /// any credentials it carries.
    pub fn snapshot(&self, backend: &str) -> Vec<RemoteMetrics> {
        let backend = crate::remote_http::without_userinfo(backend);
        let backend = backend.as_str();
        let table = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<RemoteMetrics> = table
            .iter()
            .map(|(model, s)| RemoteMetrics {
                backend: backend.to_owned(),
                model: model.clone(),
                requests: s.requests.load(Ordering::Relaxed),
                retries: s.retries.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                latency: s.latency.snapshot(),
            })
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn backend_labels_carry_no_credentials() {
        assert_eq!(
            crate::remote_http::without_userinfo("https://user:s3cret@tei.internal:8080/embed"),
            "https://tei.internal:8080/embed"
        );
        assert_eq!(
            crate::remote_http::without_userinfo("http://tei:8080/embed"),
            "http://tei:8080/embed"
        );
        assert_eq!(
            crate::remote_http::without_userinfo("http://h/a@b"),
            "http://h/a@b"
        );
    }
}
