//! The memory that large messages buffered whole may take: across all sessions (the shared
//! `ClientBudget`), and per session (`SessionHold`: a quarter of it). A session takes budget as
//! a large message's bytes actually arrive, never for the length its header announces, and
//! gives it back once the message is handled and its relayed copy written out. Small messages
//! are bounded by the read chunk and the connection limit instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{ProxyError, Result};
use crate::net::frame::Direction;

/// Messages larger than this take their bytes from the budget as they are buffered; smaller
/// ones are bounded by the read chunk and the connection limit.
pub(crate) const BUDGET_OVER: usize = 64 * 1024;

/// Budget taken ahead of the bytes that will fill it, at most: a client that stops sending
/// holds no more than this beyond what it sent. It also sizes the reads of a large message.
pub(crate) const GROW_STEP: usize = 256 * 1024;

/// One session may hold at most this fraction of the budget (1/SESSION_SHARE): a client
/// alone cannot take it all, and over it a session learns at once, from a message's header,
/// that its message will never fit (54000) instead of squatting the budget while it arrives.
const SESSION_SHARE: usize = 4;

/// The bytes that messages buffered whole may take across all sessions
/// (`--client-buffer-budget-mb`). Cloning shares the budget.
#[derive(Clone, Debug)]
pub struct ClientBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    session_cap: usize,
    used: AtomicUsize,
}

/// Bytes taken from a `ClientBudget`, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BudgetInner>,
    bytes: usize,
}

impl ClientBudget {
    /// A budget of `limit` bytes, of which one session may hold a quarter.
    pub fn new(limit: usize) -> Self {
        Self::with_session_cap(limit, limit / SESSION_SHARE)
    }

    /// A budget of `limit` bytes, of which one session may hold `session_cap`.
    pub fn with_session_cap(limit: usize, session_cap: usize) -> Self {
        ClientBudget {
            inner: Arc::new(BudgetInner {
                limit,
                session_cap: session_cap.min(limit),
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The budget's size in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// The most one session may hold, and so the largest message it can send or receive
    /// whole.
    pub fn session_cap(&self) -> usize {
        self.inner.session_cap
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: self.inner.clone(),
            bytes: 0,
        };
        reservation.try_grow(bytes).then_some(reservation)
    }
}

impl Reservation {
    /// Takes `more` bytes too, if they fit in the budget.
    pub(crate) fn try_grow(&mut self, more: usize) -> bool {
        let inner = &self.budget;
        let taken = inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&n| n <= inner.limit)
            })
            .is_ok();
        if taken {
            self.bytes += more;
        }
        taken
    }

    /// Gives `fewer` bytes back (at most what is held).
    pub(crate) fn shrink(&mut self, fewer: usize) {
        let fewer = fewer.min(self.bytes);
        self.budget.used.fetch_sub(fewer, Ordering::AcqRel);
        self.bytes -= fewer;
    }

    /// The bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What one session holds of the budget, per direction, through a large message's life:
/// while it arrives, once taken (a hook may still be handling it), and while its relayed
/// copy waits in the other side's write queue.
#[derive(Debug)]
pub(crate) struct SessionHold {
    budget: ClientBudget,
    held: Reservation,
    parts: [Parts; 2],
}

#[derive(Debug, Default, Clone, Copy)]
struct Parts {
    receiving: usize,
    taken: usize,
    draining: usize,
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::FromClient => 0,
        Direction::FromUpstream => 1,
    }
}

impl SessionHold {
    /// Nothing held yet.
    pub(crate) fn new(budget: ClientBudget) -> Self {
        let held = Reservation {
            budget: budget.inner.clone(),
            bytes: 0,
        };
        SessionHold {
            budget,
            held,
            parts: [Parts::default(); 2],
        }
    }

    /// For the message of `total` bytes at the head of a read buffer holding `buffered` of
    /// them (a message to buffer whole): how many more bytes may be read now. The budget
    /// grows with what arrived, a step at a time; a message that can never fit is refused
    /// from its header, one that does not fit now when its bytes arrive.
    pub(crate) fn room(
        &mut self,
        direction: Direction,
        total: usize,
        buffered: usize,
    ) -> Result<usize> {
        if total <= BUDGET_OVER {
            return Ok(usize::MAX);
        }
        let cap = self.budget.session_cap();
        if total > cap {
            return Err(ProxyError::MessageTooLarge {
                from: direction,
                size: total,
                limit: cap,
            });
        }
        let buffered = buffered.min(total);
        let part = &mut self.parts[index(direction)];
        if part.receiving <= buffered && buffered < total {
            let want = total.min(buffered + GROW_STEP) - part.receiving;
            if self.held.bytes() + want > cap {
                // Only when the other direction holds a large message too.
                return Err(ProxyError::MessageTooLarge {
                    from: direction,
                    size: self.held.bytes() + want,
                    limit: cap,
                });
            }
            if !self.held.try_grow(want) {
                return Err(ProxyError::OutOfMemory {
                    request: total,
                    limit: self.budget.limit(),
                });
            }
            part.receiving += want;
        }
        Ok(part.receiving.saturating_sub(buffered))
    }

    /// The message at the head of that direction's buffer was taken whole.
    pub(crate) fn took(&mut self, direction: Direction) {
        let part = &mut self.parts[index(direction)];
        part.taken += std::mem::take(&mut part.receiving);
    }

    /// The messages taken from that direction have been handled: what they hold now is at
    /// most their copies in the other side's write queue.
    pub(crate) fn handled(&mut self, direction: Direction) {
        let part = &mut self.parts[index(direction)];
        part.draining += std::mem::take(&mut part.taken);
    }

    /// The other side's write queue is below its high-water mark: the handled messages'
    /// copies are written out, their budget is given back.
    pub(crate) fn drained(&mut self, direction: Direction) {
        let part = &mut self.parts[index(direction)];
        let bytes = std::mem::take(&mut part.draining);
        if bytes > 0 {
            self.held.shrink(bytes);
        }
    }

    /// Nothing held in either direction: no large message arrives, waits or drains.
    pub(crate) fn is_clear(&self) -> bool {
        self.parts
            .iter()
            .all(|p| p.receiving == 0 && p.taken == 0 && p.draining == 0)
    }

    /// Whether handled messages from that direction still wait to be written out.
    pub(crate) fn draining(&self, direction: Direction) -> bool {
        self.parts[index(direction)].draining > 0
    }

    /// Bytes this session holds.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.held.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;

    const MIB: usize = 1024 * 1024;

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

    #[test]
    fn a_large_message_holds_only_what_arrived_plus_one_step() {
        let budget = ClientBudget::new(64 * MIB);
        let mut hold = SessionHold::new(budget.clone());
        let total = 10 * MIB;
        // The header alone: one step ahead, not the 10 MiB announced.
        assert_eq!(
            hold.room(Direction::FromClient, total, 5).unwrap(),
            GROW_STEP
        );
        assert_eq!(budget.in_use(), 5 + GROW_STEP);
        // Nothing more arrived: no more is taken.
        hold.room(Direction::FromClient, total, 5).unwrap();
        assert_eq!(budget.in_use(), 5 + GROW_STEP);
        // The step filled: the next one.
        let room = hold
            .room(Direction::FromClient, total, 5 + GROW_STEP)
            .unwrap();
        assert_eq!(room, GROW_STEP);
        assert_eq!(budget.in_use(), 5 + 2 * GROW_STEP);
        // Never beyond the message.
        let room = hold.room(Direction::FromClient, total, total - 10).unwrap();
        assert_eq!(room, 10);
        assert_eq!(budget.in_use(), total);
        hold.took(Direction::FromClient);
        assert!(
            !hold.draining(Direction::FromClient),
            "a hook is handling it"
        );
        hold.handled(Direction::FromClient);
        assert!(hold.draining(Direction::FromClient));
        assert_eq!(budget.in_use(), total, "its copy is still queued");
        hold.drained(Direction::FromClient);
        assert!(!hold.draining(Direction::FromClient));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(hold.bytes(), 0);
    }

    #[test]
    fn small_messages_take_nothing() {
        let budget = ClientBudget::new(MIB);
        let mut hold = SessionHold::new(budget.clone());
        let room = hold.room(Direction::FromUpstream, BUDGET_OVER, 5).unwrap();
        assert_eq!(room, usize::MAX);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_message_over_a_quarter_of_the_budget_is_refused_from_its_header_with_54000() {
        let budget = ClientBudget::new(4 * MIB);
        assert_eq!(budget.session_cap(), MIB);
        let mut hold = SessionHold::new(budget.clone());
        let err = hold.room(Direction::FromUpstream, MIB + 1, 5).unwrap_err();
        assert_eq!(err.sqlstate(), "54000");
        assert!(err.to_string().contains("server"), "{err}");
        assert_eq!(budget.in_use(), 0);
        hold.room(Direction::FromClient, MIB, 5).unwrap();
    }

    #[test]
    fn a_session_cannot_hold_more_than_its_share_in_both_directions_together() {
        let budget = ClientBudget::with_session_cap(16 * MIB, MIB);
        let mut hold = SessionHold::new(budget.clone());
        hold.room(Direction::FromClient, MIB, MIB - 1).unwrap();
        let err = hold.room(Direction::FromUpstream, MIB / 2, 5).unwrap_err();
        assert_eq!(err.sqlstate(), "54000");
        hold.took(Direction::FromClient);
        hold.handled(Direction::FromClient);
        hold.drained(Direction::FromClient);
        hold.room(Direction::FromUpstream, MIB / 2, 5).unwrap();
    }

    #[test]
    fn when_other_sessions_hold_the_budget_the_next_step_fails_with_53200() {
        let budget = ClientBudget::with_session_cap(MIB, MIB);
        let others = budget.reserve(MIB - GROW_STEP / 2).unwrap();
        let mut hold = SessionHold::new(budget.clone());
        let err = hold.room(Direction::FromClient, MIB / 2, 5).unwrap_err();
        assert_eq!(err.sqlstate(), "53200");
        drop(others);
        hold.room(Direction::FromClient, MIB / 2, 5).unwrap();
        drop(hold);
        assert_eq!(
            budget.in_use(),
            0,
            "a session's hold is given back when it ends"
        );
    }
}
