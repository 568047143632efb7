//! Statement latency as the client sees it: from the first message of a cycle (a Query, or
//! the first extended-protocol message after a Sync) to the ReadyForQuery that ends it,
//! labelled with the slowest path the interceptor used for it. One `Instant::now` per cycle
//! and a branch per message; cycles in flight wait in a FIFO that mirrors the ReadyForQuery
//! messages owed, so pipelined cycles are timed each on their own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::net::messages::client_tag;

/// How a statement was served, slowest last: a cycle that used several is labelled with the
/// slowest (a Query with a constant and an upcalled statement is an upcall).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Path {
    /// Relayed untouched (no pgml.embed the proxy served).
    #[default]
    Passthrough,
    /// Computed at the proxy and spliced in (path 1).
    Constant,
    /// Prefetched into the session's table (path 2).
    Prefetch,
    /// Left to the shim, answered by upcall (path 3).
    Upcall,
}

impl Path {
    /// Every path, in label order.
    pub const ALL: [Path; 4] = [
        Path::Passthrough,
        Path::Constant,
        Path::Prefetch,
        Path::Upcall,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Path::Passthrough => "passthrough",
            Path::Constant => "constant",
            Path::Prefetch => "prefetch",
            Path::Upcall => "upcall",
        }
    }
}

/// Whether a client message with `tag` belongs to a statement cycle: COPY data (which
/// follows its Query, inside that cycle) and Terminate do not open one.
pub fn opens_cycle(tag: u8) -> bool {
    !matches!(
        tag,
        client_tag::COPY_DATA
            | client_tag::COPY_DONE
            | client_tag::COPY_FAIL
            | client_tag::TERMINATE
    )
}

/// Cycles timed at once; a client pipelining more gets the rest counted but not timed (the
/// queue stays bounded whatever it sends).
const MAX_TIMED: usize = 1024;

#[derive(Debug)]
enum Slot {
    Timed { started: Instant, path: Path },
    Untimed(usize),
}

/// The cycles of one session, from their first message to their ReadyForQuery.
#[derive(Debug, Default)]
pub struct StatementClock {
    /// When the cycle being received began (its first message arrived).
    open: Option<Instant>,
    /// The slowest path noted for the cycle being received.
    path: Path,
    /// Relayed cycles still owed a ReadyForQuery, oldest first.
    in_flight: VecDeque<Slot>,
}

impl StatementClock {
    /// A client message arrived: it starts the cycle unless one is already open.
    pub fn arrived(&mut self) {
        if self.open.is_none() {
            self.open = Some(Instant::now());
        }
    }

    /// The interceptor serves the cycle being received by `path`.
    pub fn note(&mut self, path: Path) {
        self.path = self.path.max(path);
    }

    /// The interceptor found that the oldest cycle in flight (the one running upstream) is
    /// served by `path` after all (the shim upcalled).
    pub fn note_running(&mut self, path: Path) {
        if let Some(Slot::Timed { path: p, .. }) = self.in_flight.front_mut() {
            *p = (*p).max(path);
        }
    }

    /// A Query, Sync or FunctionCall was relayed: its cycle is in flight.
    pub(crate) fn relayed_end_of_cycle(&mut self) {
        let started = self.open.take().unwrap_or_else(Instant::now);
        let path = std::mem::take(&mut self.path);
        if self.in_flight.len() < MAX_TIMED {
            self.in_flight.push_back(Slot::Timed { started, path });
        } else if let Some(Slot::Untimed(n)) = self.in_flight.back_mut() {
            *n += 1;
        } else {
            self.in_flight.push_back(Slot::Untimed(1));
        }
    }

    /// A Query, Sync or FunctionCall was handled: a cycle the interceptor answered itself
    /// (nothing relayed) ends here, so its start does not leak into the next.
    pub(crate) fn handled_end_of_cycle(&mut self) {
        self.open = None;
        self.path = Path::Passthrough;
    }

    /// A ReadyForQuery arrived: the oldest cycle in flight ended; its path and latency.
    pub(crate) fn ready(&mut self) -> Option<(Path, Duration)> {
        match self.in_flight.front_mut()? {
            Slot::Timed { started, path } => {
                let done = (*path, started.elapsed());
                self.in_flight.pop_front();
                Some(done)
            }
            Slot::Untimed(n) => {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.pop_front();
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_cycles_end_in_order_with_their_own_paths() {
        let mut clock = StatementClock::default();
        clock.arrived();
        clock.note(Path::Constant);
        clock.relayed_end_of_cycle();
        let before_second = Instant::now();
        clock.arrived();
        clock.arrived();
        clock.relayed_end_of_cycle();
        clock.note_running(Path::Upcall);
        let (first, _) = clock.ready().expect("first");
        assert_eq!(
            first,
            Path::Upcall,
            "an upcall seen while it ran outranks constant"
        );
        let (second, second_elapsed) = clock.ready().expect("second");
        assert_eq!(second, Path::Passthrough);
        // Timed from its own first message (no window: the clock is monotonic).
        assert!(second_elapsed <= before_second.elapsed());
        assert_eq!(clock.ready(), None, "nothing owed");
    }

    #[test]
    fn a_cycle_answered_without_relaying_does_not_leak_its_start() {
        let mut clock = StatementClock::default();
        clock.arrived();
        clock.note(Path::Prefetch);
        clock.handled_end_of_cycle();
        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        clock.arrived();
        clock.relayed_end_of_cycle();
        let (path, elapsed) = clock.ready().expect("timed");
        assert_eq!(path, Path::Passthrough);
        // Started at its own message, after the sleep, not at the unrelayed cycle's.
        assert!(elapsed <= before.elapsed(), "{elapsed:?}");
    }

    #[test]
    fn copy_data_after_its_query_does_not_start_the_next_cycle() {
        for tag in [b'Q', b'P', b'B', b'D', b'E', b'C', b'H', b'S', b'F'] {
            assert!(opens_cycle(tag), "{}", tag as char);
        }
        for tag in [b'd', b'c', b'f', b'X'] {
            assert!(!opens_cycle(tag), "{}", tag as char);
        }
    }

    #[test]
    fn a_deep_pipeline_stays_bounded_and_aligned() {
        let mut clock = StatementClock::default();
        for _ in 0..MAX_TIMED + 500 {
            clock.arrived();
            clock.relayed_end_of_cycle();
        }
        assert_eq!(clock.in_flight.len(), MAX_TIMED + 1);
        let timed = (0..MAX_TIMED + 500)
            .filter(|_| clock.ready().is_some())
            .count();
        assert_eq!(timed, MAX_TIMED);
        assert!(clock.in_flight.is_empty());
        clock.arrived();
        clock.relayed_end_of_cycle();
        assert!(clock.ready().is_some(), "timing resumes once drained");
    }
}
