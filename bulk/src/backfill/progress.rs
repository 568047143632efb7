//! Progress of a backfill, shared between its workers and handed to the caller's callback after
//! every committed batch; the CLI renders it (a bar on a terminal, periodic lines otherwise).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A snapshot of a running (or finished) backfill.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Rows written (embedded and committed) in this run.
    pub done: u64,
    /// Rows that needed an embedding when the run started.
    pub total: u64,
    /// Rows skipped because their text changed after it was read (picked up by a later pass).
    pub changed: u64,
    /// Batches committed.
    pub batches: u64,
    /// Time since the run started.
    pub elapsed: Duration,
}

impl Progress {
    /// Rows written per second so far.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// Estimated time left at the current rate (None before the first batch).
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rows_per_second();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }
}

/// Counters the workers update.
#[derive(Debug)]
pub(crate) struct ProgressState {
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    changed: AtomicU64,
    batches: AtomicU64,
}

impl ProgressState {
    pub(crate) fn new() -> Self {
        ProgressState {
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            changed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub(crate) fn record_batch(&self, written: u64, changed: u64) {
        self.done.fetch_add(written, Ordering::Relaxed);
        self.changed.fetch_add(changed, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Progress {
        Progress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            changed: self.changed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }
}
