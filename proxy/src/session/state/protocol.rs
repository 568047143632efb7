//! What the upstream will still answer for what was relayed: which messages get a
//! ReadyForQuery, whether Postgres skips to a Sync after an error (a Query in between is
//! skipped too), whether it is in COPY FROM STDIN (which reads and ignores Syncs). The stream
//! is read as Postgres' protocol loop would produce it (`reading`).
//!
//! One reading, except after a COPY fails on its own while Syncs sent during it were taken as
//! read (it ignores them if it gets to them first): then one reading per number it may have
//! read, and each response drops the readings in which Postgres could not have sent it, until
//! one is left. Meanwhile the counts owed are the smallest of them (waiting for them never
//! waits for one that will not come) and the upstream is not idle for the proxy's own queries.

use super::reading::{Answered, Reading};

/// The most readings kept after a COPY failed (a client sending more Syncs inside one loses
/// exactness, not safety: the smallest count is kept).
const MAX_READINGS: usize = 8;

#[derive(Debug)]
pub(super) struct UpstreamProtocol {
    /// Never empty; the first is the likeliest (the COPY read every Sync before failing).
    readings: Vec<Reading>,
}

impl Default for UpstreamProtocol {
    fn default() -> Self {
        UpstreamProtocol {
            readings: vec![Reading::default()],
        }
    }
}

impl UpstreamProtocol {
    /// ReadyForQuery messages still to come without more client input.
    pub fn pending_ready(&self) -> usize {
        self.readings
            .iter()
            .map(Reading::pending_ready)
            .min()
            .unwrap_or(0)
    }

    /// Everything relayed has been answered, no batch, COPY or skip is in progress, and the
    /// stream has one reading.
    pub fn idle(&self) -> bool {
        matches!(self.readings.as_slice(), [only] if only.idle())
    }

    /// Postgres is discarding messages until a Sync, in every reading.
    pub fn skipping(&self) -> bool {
        self.readings.iter().all(Reading::skipping)
    }

    /// One reading, which takes no Sync as read by a COPY that may still fail before reading
    /// it: the counts are exact.
    pub fn sure(&self) -> bool {
        matches!(self.readings.as_slice(), [only] if !only.presumes())
    }

    /// A client message with `tag` was relayed upstream; true when it owes a ReadyForQuery
    /// (in the likeliest reading).
    #[inline]
    pub fn relayed(&mut self, tag: u8) -> bool {
        // Called for every relayed message: no allocation.
        if let [only] = self.readings.as_mut_slice() {
            return only.relayed(tag);
        }
        let mut first = None;
        for reading in &mut self.readings {
            let owes = reading.relayed(tag);
            first.get_or_insert(owes);
        }
        first.unwrap_or(false)
    }

    /// The upstream sent a message with `tag` on the relay path; what it did in the likeliest
    /// reading left.
    #[inline]
    pub fn answered(&mut self, tag: u8) -> Answered {
        if self.readings.len() > 1 {
            let before = std::mem::take(&mut self.readings);
            let (kept, dropped): (Vec<Reading>, Vec<Reading>) =
                before.into_iter().partition(|r| r.allows(tag));
            // Postgres sent it: at least one reading allows it, unless something was missed.
            self.readings = if kept.is_empty() { dropped } else { kept };
        }
        if let [only] = self.readings.as_mut_slice() {
            // An ErrorResponse that ends a COPY which took Syncs as read forks the reading.
            if tag == crate::net::messages::server_tag::ERROR_RESPONSE
                && only.in_copy()
                && only.presumes()
            {
                let (readings, answered) = only.copy_failed(MAX_READINGS);
                self.readings = readings;
                return answered;
            }
            // The usual case, on every server message (each DataRow): no allocation.
            return only.answered(tag);
        }
        let mut first = None;
        for reading in &mut self.readings {
            let answered = reading.answered(tag);
            first.get_or_insert(answered);
        }
        // Readings that agree from here on are one.
        let mut distinct: Vec<Reading> = Vec::with_capacity(self.readings.len());
        for reading in std::mem::take(&mut self.readings) {
            if !distinct.contains(&reading) {
                distinct.push(reading);
            }
        }
        self.readings = distinct;
        first.unwrap_or_default()
    }

    /// The proxy ended the client's batch with a Sync of its own and read its ReadyForQuery.
    pub fn batch_ended_privately(&mut self) {
        for reading in &mut self.readings {
            reading.batch_ended_privately();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relays `client` (tags), then feeds `server` (tags); returns the model.
    fn after(client: &[u8], server: &[u8]) -> UpstreamProtocol {
        let mut model = UpstreamProtocol::default();
        for &tag in client {
            model.relayed(tag);
        }
        for &tag in server {
            model.answered(tag);
        }
        model
    }

    #[test]
    fn a_sync_inside_copy_from_stdin_is_read_and_ignored() {
        let mut model = after(b"Q", b"G");
        assert_eq!(model.pending_ready(), 0, "the COPY waits for the client");
        assert!(!model.idle());
        for tag in *b"dSHd" {
            assert!(!model.relayed(tag));
        }
        model.relayed(b'c');
        assert_eq!(model.pending_ready(), 1);
        model.answered(b'C');
        model.answered(b'Z');
        assert_eq!(model.pending_ready(), 0);
        assert!(model.idle() && model.sure());
    }

    #[test]
    fn syncs_sent_before_the_copy_began_are_read_by_it() {
        // libpq's PQexecParams of a COPY: Parse, Bind, Describe, Execute, Sync at once; after
        // the data, CopyDone and another Sync.
        let mut model = after(b"PBDES", b"12n");
        assert_eq!(model.pending_ready(), 1);
        model.answered(b'G');
        assert_eq!(model.pending_ready(), 0);
        for tag in *b"dcS" {
            model.relayed(tag);
        }
        model.answered(b'C');
        assert_eq!(model.pending_ready(), 1);
        assert!(
            model.sure(),
            "the COPY read its CopyDone: every Sync before it too"
        );
        model.answered(b'Z');
        assert!(model.idle());
    }

    #[test]
    fn a_query_after_an_error_in_an_open_batch_is_skipped_with_it() {
        let mut model = after(b"PBQ", b"");
        assert_eq!(model.pending_ready(), 1);
        assert_eq!(model.answered(b'E').forgotten, 1);
        assert!(model.skipping() && !model.idle());
        assert_eq!(model.pending_ready(), 0);
        assert!(!model.relayed(b'Q'), "skipped too");
        assert!(model.relayed(b'S'));
        assert!(model.answered(b'Z').ready);
        assert!(model.idle());
    }

    #[test]
    fn an_error_in_a_query_ends_only_the_query() {
        let mut model = after(b"QQ", b"EZ");
        assert_eq!(model.pending_ready(), 1);
        model.answered(b'C');
        model.answered(b'Z');
        assert!(model.idle());
    }

    #[test]
    fn a_copy_that_fails_with_a_sync_inside_is_read_both_ways_until_postgres_shows_which() {
        for sync_was_read in [true, false] {
            let mut model = after(b"Q", b"G");
            for tag in *b"dSd" {
                model.relayed(tag);
            }
            model.answered(b'E');
            assert!(!model.sure() && !model.idle());
            assert!(model.answered(b'Z').ready);
            assert_eq!(model.pending_ready(), 0, "the smallest count");
            if !sync_was_read {
                model.answered(b'Z');
            }
            model.relayed(b'Q');
            model.answered(b'C');
            assert!(model.sure(), "read {sync_was_read}");
            model.answered(b'Z');
            assert!(model.idle(), "read {sync_was_read}");
        }
    }

    #[test]
    fn a_failed_extended_copy_skips_to_the_sync_after_its_data() {
        let mut model = after(b"PBES", b"12G");
        for tag in *b"dfS" {
            model.relayed(tag);
        }
        assert_eq!(model.pending_ready(), 1);
        model.answered(b'E');
        assert!(
            !model.sure(),
            "the first Sync may not have been read by the COPY"
        );
        assert!(model.answered(b'Z').ready);
        // The COPY had read it: nothing more comes, and the next Query shows it.
        model.relayed(b'Q');
        model.answered(b'I');
        assert!(model.sure());
        assert!(model.answered(b'Z').ready);
        assert!(model.idle());
    }

    #[test]
    fn responses_to_messages_the_proxy_added_change_nothing() {
        let mut model = after(b"BES", b"31");
        assert!(!model.answered(b'2').ready);
        model.answered(b'C');
        model.answered(b'3');
        assert_eq!(model.pending_ready(), 1);
        assert!(model.answered(b'Z').ready);
        assert!(model.idle());
    }

    #[test]
    fn copy_messages_outside_copy_are_ignored() {
        assert!(after(b"cfd", b"").idle());
        assert!(after(b"Qc", b"CZ").idle());
    }
}
