//! The memory that client messages buffered whole may take across all sessions: a session
//! reserves a large message's size before buffering it, and gives it back when the message is
//! gone. Small messages are bounded by the read chunk and the connection limit instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The bytes that client messages buffered whole may take across all sessions
/// (`--client-buffer-budget`). Cloning shares the budget.
#[derive(Clone, Debug)]
pub struct ClientBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes taken from a `ClientBudget`, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BudgetInner>,
    bytes: usize,
}

impl ClientBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ClientBudget {
            inner: Arc::new(BudgetInner {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The budget's size in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    pub(crate) fn reserve(&self, bytes: usize) -> Option<Reservation> {
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.inner.limit)
            })
            .ok()?;
        Some(Reservation {
            budget: self.inner.clone(),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_back_what_is_dropped() {
        let budget = ClientBudget::new(100);
        let a = budget.reserve(60).unwrap();
        assert!(budget.reserve(41).is_none());
        let b = budget.reserve(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        assert!(budget.reserve(usize::MAX).is_none());
        drop(b);
        assert_eq!(budget.in_use(), 0);
        let err = ProxyError::OutOfMemory {
            request: 1 << 30,
            limit: 100,
        };
        assert_eq!(err.sqlstate(), "53200");
        assert!(err.detail().unwrap().contains("--client-buffer-budget-mb"));
    }
}
