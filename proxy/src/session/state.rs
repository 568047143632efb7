//! Per-session state tracked from the message stream (the client's view of it): the
//! transaction status, how many ReadyForQuery messages the upstream still owes for what was
//! relayed, and the run-time parameters that change how SQL text is read (every
//! ParameterStatus, those of the startup phase included), and the clock of the cycles in
//! flight (`timing`). It never changes a message.

use crate::error::Result;
use crate::net::encoding::ClientEncoding;
use crate::net::frame::Frame;
use crate::net::messages::parameter_status::ParameterStatus;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::server_tag;
use crate::session::timing::{Path, StatementClock};

/// What the proxy knows about one client session.
#[derive(Debug)]
pub struct SessionState {
    id: u64,
    transaction: TransactionStatus,
    pending_ready: usize,
    batch_open: bool,
    backend_key: Option<Vec<u8>>,
    standard_conforming_strings: bool,
    client_encoding: ClientEncoding,
    clock: StatementClock,
    /// The cycle the last ReadyForQuery ended: its path and latency.
    finished: Option<(Path, std::time::Duration)>,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            id: 0,
            transaction: TransactionStatus::default(),
            pending_ready: 0,
            batch_open: false,
            backend_key: None,
            // Postgres' defaults, until the server says otherwise.
            standard_conforming_strings: true,
            client_encoding: ClientEncoding::Utf8,
            clock: StatementClock::default(),
            finished: None,
        }
    }
}

impl SessionState {
    /// Fresh state for session `id`.
    pub fn new(id: u64) -> Self {
        SessionState {
            id,
            ..Default::default()
        }
    }

    /// The upstream session's BackendKeyData body (process id and secret key): what a
    /// CancelRequest for it carries.
    pub fn backend_key(&self) -> Option<&[u8]> {
        self.backend_key.as_deref()
    }

    /// The session's `standard_conforming_strings`, as the server last reported it.
    pub fn standard_conforming_strings(&self) -> bool {
        self.standard_conforming_strings
    }

    /// The session's `client_encoding`, as the server last reported it.
    pub fn client_encoding(&self) -> ClientEncoding {
        self.client_encoding
    }

    /// The proxy's session id (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The transaction status from the last ReadyForQuery relayed.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.transaction
    }

    /// Overrides the transaction status (for an interceptor that read a ReadyForQuery itself).
    pub fn set_transaction_status(&mut self, status: TransactionStatus) {
        self.transaction = status;
    }

    /// ReadyForQuery messages still owed by the upstream for Query, Sync and FunctionCall
    /// messages relayed to it.
    pub fn pending_ready(&self) -> usize {
        self.pending_ready
    }

    /// True when the upstream is idle for the proxy's own queries: every ReadyForQuery owed
    /// has arrived and no extended-protocol message was relayed after the last Sync.
    pub fn upstream_idle(&self) -> bool {
        self.pending_ready == 0 && !self.batch_open
    }

    /// Records a message relayed upstream: one answered by a ReadyForQuery (Query, Sync,
    /// FunctionCall) is owed; any other opens an extended-protocol batch until the next.
    pub(crate) fn on_relayed_upstream(&mut self, expects_ready: bool) {
        if expects_ready {
            self.pending_ready += 1;
            self.clock.relayed_end_of_cycle();
        }
        self.batch_open = !expects_ready;
    }

    /// The latency clock of this session's cycles (the interceptor notes paths on it).
    pub fn clock_mut(&mut self) -> &mut StatementClock {
        &mut self.clock
    }

    /// The path and latency of the cycle the last ReadyForQuery ended, once.
    pub fn take_finished(&mut self) -> Option<(Path, std::time::Duration)> {
        self.finished.take()
    }

    /// Records the ReadyForQuery of a Sync the proxy sent itself to end the client's open
    /// extended-protocol batch early (the client's own Sync is still to come).
    pub fn end_batch_privately(&mut self, status: TransactionStatus) {
        self.transaction = status;
        self.batch_open = false;
    }

    /// Records a server message on the relay path.
    pub fn on_server(&mut self, frame: &Frame) -> Result<()> {
        match frame.tag() {
            server_tag::READY_FOR_QUERY => {
                self.transaction = TransactionStatus::decode(frame)?;
                self.pending_ready = self.pending_ready.saturating_sub(1);
                self.finished = self.clock.ready();
            }
            server_tag::BACKEND_KEY_DATA => self.backend_key = Some(frame.body().to_vec()),
            server_tag::PARAMETER_STATUS => {
                let status = ParameterStatus::decode(frame)?;
                match status.name {
                    "standard_conforming_strings" => {
                        self.standard_conforming_strings = status.value == "on";
                    }
                    "client_encoding" => {
                        self.client_encoding = ClientEncoding::from_name(status.value);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_status_and_owed_ready_for_query_follow_the_stream() {
        let mut state = SessionState::new(7);
        state.on_relayed_upstream(true);
        state.on_relayed_upstream(false);
        assert_eq!(state.pending_ready(), 1);
        assert!(!state.upstream_idle());
        state.on_server(&Frame::new(b'Z', b"T")).unwrap();
        assert_eq!(state.pending_ready(), 0);
        assert_eq!(state.transaction_status(), TransactionStatus::InTransaction);
        state.on_server(&Frame::new(b'Z', b"I")).unwrap();
        assert_eq!(state.transaction_status(), TransactionStatus::Idle);
        assert!(
            !state.upstream_idle(),
            "a Bind without its Sync keeps the batch open"
        );
        state.on_relayed_upstream(true);
        state.on_server(&Frame::new(b'Z', b"I")).unwrap();
        assert!(state.upstream_idle());
        assert_eq!(state.pending_ready(), 0, "never below zero");
        assert!(state.on_server(&Frame::new(b'Z', b"?")).is_err());
    }

    #[test]
    fn parameters_that_change_how_sql_is_read_follow_parameter_status() {
        let mut state = SessionState::new(1);
        assert!(state.standard_conforming_strings());
        assert_eq!(state.client_encoding(), ClientEncoding::Utf8);
        let status = |name, value| ParameterStatus { name, value }.encode();
        state
            .on_server(&status("standard_conforming_strings", "off"))
            .unwrap();
        state
            .on_server(&status("client_encoding", "LATIN1"))
            .unwrap();
        state.on_server(&status("TimeZone", "UTC")).unwrap();
        assert!(!state.standard_conforming_strings());
        assert_eq!(state.client_encoding(), ClientEncoding::Latin1);
    }
}
