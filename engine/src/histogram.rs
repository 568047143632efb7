//! A latency histogram in the Prometheus sense: fixed bucket bounds (0.5 ms to 10 s), one
//! atomic counter per bucket and an atomic sum, so recording is two relaxed adds and never
//! takes a lock. `HistogramSnapshot` is what an exposition reads; rendering is the proxy's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (the last bucket, `+Inf`, is implied).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, so an observation is placed without float arithmetic.
const BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// Durations counted into `LATENCY_BUCKETS`; shared by reference, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), then the overflow above the last bound.
    counts: [AtomicU64; SLOTS],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a `Histogram`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Per bucket of `LATENCY_BUCKETS` (not cumulative), then the overflow.
    pub counts: [u64; SLOTS],
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BOUNDS_NANOS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts and sum now (each read on its own: a concurrent observation may show in
    /// one and not yet in the other, as with any lock-free Prometheus client).
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl HistogramSnapshot {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last, as Prometheus exposes them.
    pub fn cumulative(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let bounds = LATENCY_BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_owned()));
        bounds.zip(self.counts.iter().scan(0u64, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.counts[0], 2, "<= 0.5 ms, the bound itself included");
        assert_eq!(s.counts[3], 1, "3 ms is in (2.5 ms, 5 ms]");
        assert_eq!(s.counts[SLOTS - 1], 1, "a minute overflows");
        assert!((s.sum_seconds - 60.0036).abs() < 1e-9, "{}", s.sum_seconds);
        let cumulative: Vec<(String, u64)> = s.cumulative().collect();
        assert_eq!(cumulative[0], ("0.0005".to_owned(), 2));
        assert_eq!(cumulative[3], ("0.005".to_owned(), 3));
        assert_eq!(cumulative[13], ("10".to_owned(), 3));
        assert_eq!(cumulative[14], ("+Inf".to_owned(), 4));
    }

    #[test]
    fn bounds_agree_in_both_units() {
        for (secs, nanos) in LATENCY_BUCKETS.iter().zip(BOUNDS_NANOS) {
            assert_eq!((secs * 1e9).round() as u64, nanos);
        }
    }
}
