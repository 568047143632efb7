//! Per-session state tracked from the message stream (the client's view of it): transaction
//! status, prepared statement texts by name, and how many ReadyForQuery messages the upstream
//! still owes for what was relayed. It never changes a message. Portals are not tracked: a
//! Bind is on the hot path of every prepared execution, and nothing needs them.

use std::collections::HashMap;

use crate::error::Result;
use crate::frame::Frame;
use crate::messages::close::{Close, Target};
use crate::messages::parse::Parse;
use crate::messages::ready_for_query::TransactionStatus;
use crate::messages::{client_tag, server_tag};

/// A statement prepared with Parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedStatement {
    /// The SQL text the client sent.
    pub sql: String,
    /// Declared parameter type OIDs.
    pub param_types: Vec<u32>,
}

/// What the proxy knows about one client session.
#[derive(Debug, Default)]
pub struct SessionState {
    id: u64,
    transaction: TransactionStatus,
    statements: HashMap<String, PreparedStatement>,
    pending_ready: usize,
    backend_key: Option<Vec<u8>>,
}

impl SessionState {
    /// Fresh state for session `id`.
    pub fn new(id: u64) -> Self {
        SessionState {
            id,
            ..Default::default()
        }
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

    /// A prepared statement by name ("" is the unnamed one).
    pub fn statement(&self, name: &str) -> Option<&PreparedStatement> {
        self.statements.get(name)
    }

    /// ReadyForQuery messages still owed by the upstream for Query, Sync and FunctionCall
    /// messages relayed to it.
    pub fn pending_ready(&self) -> usize {
        self.pending_ready
    }

    /// The BackendKeyData body the client received (process id and secret key).
    pub fn backend_key(&self) -> Option<&[u8]> {
        self.backend_key.as_deref()
    }

    /// Records a client message the session received (before any interceptor acts on it).
    pub fn on_client(&mut self, frame: &Frame) -> Result<()> {
        match frame.tag() {
            client_tag::PARSE => {
                let parse = Parse::decode(frame)?;
                self.statements.insert(
                    parse.name.to_owned(),
                    PreparedStatement {
                        sql: parse.sql.to_owned(),
                        param_types: parse.param_types,
                    },
                );
            }
            client_tag::CLOSE => {
                let close = Close::decode(frame)?;
                if close.target == Target::Statement {
                    self.statements.remove(close.name);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Counts a message relayed upstream that the server answers with a ReadyForQuery.
    pub(crate) fn on_relayed_upstream(&mut self, tag: u8) {
        if matches!(
            tag,
            client_tag::QUERY | client_tag::SYNC | client_tag::FUNCTION_CALL
        ) {
            self.pending_ready += 1;
        }
    }

    /// Records a server message on the relay path.
    pub fn on_server(&mut self, frame: &Frame) -> Result<()> {
        match frame.tag() {
            server_tag::READY_FOR_QUERY => {
                self.transaction = TransactionStatus::decode(frame)?;
                self.pending_ready = self.pending_ready.saturating_sub(1);
            }
            server_tag::BACKEND_KEY_DATA => self.backend_key = Some(frame.body().to_vec()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::query::Query;

    #[test]
    fn statements_and_transaction_status_follow_the_stream() {
        let mut state = SessionState::new(7);
        let parse = Parse {
            name: "s1",
            sql: "select $1",
            param_types: vec![25],
        };
        state.on_client(&parse.encode()).unwrap();
        assert_eq!(state.statement("s1").unwrap().sql, "select $1");

        state.on_relayed_upstream(b'S');
        state.on_relayed_upstream(b'H');
        assert_eq!(state.pending_ready(), 1);
        state.on_server(&Frame::new(b'Z', b"T")).unwrap();
        assert_eq!(state.pending_ready(), 0);
        assert_eq!(state.transaction_status(), TransactionStatus::InTransaction);
        state.on_server(&Frame::new(b'Z', b"I")).unwrap();
        assert_eq!(state.transaction_status(), TransactionStatus::Idle);
        // Closing a portal leaves the statement of the same name alone.
        state.on_client(&Frame::new(b'C', b"Ps1\0")).unwrap();
        assert!(state.statement("s1").is_some());

        state.on_client(&Frame::new(b'C', b"Ss1\0")).unwrap();
        assert!(state.statement("s1").is_none());
        state.on_client(&Query::encode("select 1")).unwrap();
    }
}
