//! Per-session state tracked from the message stream (the client's view of it): the
//! transaction status, what the upstream will still answer for what was relayed (`protocol`:
//! Postgres' protocol loop, skips after errors and COPY included), and the run-time parameters
//! that change how SQL text is read (every ParameterStatus, those of the startup phase
//! included), and the clock of the cycles in flight (`timing`). It never changes a message.

mod protocol;
mod reading;

use crate::error::Result;
use crate::net::encoding::ClientEncoding;
use crate::net::frame::Frame;
use crate::net::messages::parameter_status::ParameterStatus;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::{client_tag, server_tag};
use crate::session::timing::{Path, StatementClock};

/// What the proxy knows about one client session.
#[derive(Debug)]
pub struct SessionState {
    id: u64,
    transaction: TransactionStatus,
    upstream: protocol::UpstreamProtocol,
    /// The tag of the client message being handled (see `on_relayed_upstream`).
    handling: Option<u8>,
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
            upstream: protocol::UpstreamProtocol::default(),
            handling: None,
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

    /// ReadyForQuery messages the upstream will still send, without more client input, for
    /// the Query, Sync and FunctionCall messages relayed to it: not for those Postgres skips
    /// after an error in an extended-protocol batch, nor for a Sync a COPY FROM STDIN reads,
    /// nor (yet) for a Query whose COPY FROM STDIN waits for the client's data.
    pub fn pending_ready(&self) -> usize {
        self.upstream.pending_ready()
    }

    /// True when the upstream is idle for the proxy's own queries: everything relayed has been
    /// answered, and no extended-protocol batch (nor its skip to Sync after an error), COPY or
    /// doubt about the counts (`in_step`) is left.
    pub fn upstream_idle(&self) -> bool {
        self.upstream.idle()
    }

    /// True while the upstream discards every message up to the next Sync (an error ended
    /// the client's extended-protocol batch): a message relayed now has no effect at all.
    pub fn upstream_skipping(&self) -> bool {
        self.upstream.skipping()
    }

    /// False while Syncs the client sent during a COPY FROM STDIN are taken as read by it
    /// (Postgres ignores them there) although the COPY may fail before reading them, and after
    /// it did fail: Postgres may answer some of them after all, which only its next response
    /// to another message shows. Meanwhile `pending_ready` is a lower bound.
    pub fn in_step(&self) -> bool {
        self.upstream.sure()
    }

    /// Records a client message with `tag` relayed upstream (what `SessionIo::send_upstream`
    /// queues): those the upstream will answer with a ReadyForQuery are owed one.
    #[inline]
    pub fn on_relayed(&mut self, tag: u8) {
        if self.upstream.relayed(tag) {
            self.clock.relayed_end_of_cycle();
        }
    }

    /// The relay is handling a client message with `tag` (None once handled).
    pub(crate) fn handling(&mut self, tag: Option<u8>) {
        self.handling = tag;
    }

    /// `on_relayed` for a caller that knows only whether the message expects a ReadyForQuery:
    /// whatever the hook relays for a client message is of the same kind (a rewritten Query
    /// for a Query, a Bind for a Bind), so the tag is that of the message being handled.
    pub(crate) fn on_relayed_upstream(&mut self, expects_ready: bool) {
        let tag = match self.handling {
            Some(tag) if client_tag::expects_ready(tag) == expects_ready => tag,
            _ if expects_ready => client_tag::QUERY,
            _ => client_tag::FLUSH,
        };
        self.on_relayed(tag);
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
        self.upstream.batch_ended_privately();
    }

    /// Records a server message on the relay path.
    pub fn on_server(&mut self, frame: &Frame) -> Result<()> {
        self.on_server_parts(frame.tag(), frame.body())
    }

    /// `on_server` for a message given as its tag and body (read in place, by the lean relay).
    pub fn on_server_parts(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        if tag == server_tag::READY_FOR_QUERY {
            // Decoded first: a malformed one changes nothing.
            self.transaction = TransactionStatus::from_body(body)?;
        }
        let answered = self.upstream.answered(tag);
        for _ in 0..answered.forgotten {
            // Their cycles end unanswered (untimed).
            let _ = self.clock.ready();
        }
        if answered.ready {
            self.finished = self.clock.ready();
        }
        match tag {
            server_tag::BACKEND_KEY_DATA => self.backend_key = Some(body.to_vec()),
            server_tag::PARAMETER_STATUS => {
                let status = ParameterStatus::from_body(body)?;
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
        state.on_relayed(client_tag::QUERY);
        state.on_relayed(client_tag::BIND);
        assert_eq!(state.pending_ready(), 1);
        assert!(!state.upstream_idle());
        state.on_server(&Frame::new(b'C', b"BEGIN\0")).unwrap();
        state.on_server(&Frame::new(b'Z', b"T")).unwrap();
        assert_eq!(state.pending_ready(), 0);
        assert_eq!(state.transaction_status(), TransactionStatus::InTransaction);
        state.on_server(&Frame::new(b'2', b"")).unwrap();
        assert!(
            !state.upstream_idle(),
            "a Bind without its Sync keeps the batch open"
        );
        state.on_relayed(client_tag::SYNC);
        state.on_server(&Frame::new(b'Z', b"I")).unwrap();
        assert_eq!(state.transaction_status(), TransactionStatus::Idle);
        assert!(state.upstream_idle());
        state.on_server(&Frame::new(b'Z', b"I")).unwrap();
        assert_eq!(state.pending_ready(), 0, "never below zero");
        assert!(state.on_server(&Frame::new(b'Z', b"?")).is_err());
    }

    #[test]
    fn a_relayed_message_counts_as_the_kind_of_client_message_being_handled() {
        let mut state = SessionState::new(7);
        state.handling(Some(client_tag::SYNC));
        state.on_relayed_upstream(true);
        state.handling(Some(client_tag::PARSE));
        state.on_relayed_upstream(false);
        state.handling(None);
        assert_eq!(state.pending_ready(), 1);
        state.on_server(&Frame::new(b'Z', b"I")).unwrap();
        assert_eq!(state.pending_ready(), 0);
        assert!(!state.upstream_idle(), "the Parse opened a batch");
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
