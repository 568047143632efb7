//! One transaction for a prefetched statement sent outside a transaction block: the proxy opens
//! it before the prefetch query, the statement runs in it, and it ends with the statement (COMMIT
//! after success, ROLLBACK after an error), so the client sees what autocommit would show (an
//! idle ReadyForQuery) while the prefetch read and the statement form one unit: through a
//! transaction-mode pooler they run on one backend, and nothing of a failed statement commits.
//! Until it has ended, the client's next message waits (a pipelining client's next statement
//! must not join it); a client that closes its connection meanwhile still gets the COMMIT it
//! would have had in autocommit.

use super::InterceptHook;
use crate::error::Result;
use crate::net::frame::Frame;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::session::io::SessionIo;

/// Opens the transaction; the computation that follows may take seconds, which a server's
/// `idle_in_transaction_session_timeout` must not count against it.
const BEGIN: &str = "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0";

impl InterceptHook {
    /// Opens the proxy's transaction when the session is idle (autocommit); true when it did.
    /// The upstream must be idle.
    pub(super) async fn begin_wrap(&mut self, io: &mut SessionIo) -> Result<bool> {
        if self.wrapped || io.state().transaction_status() != TransactionStatus::Idle {
            return Ok(false);
        }
        let result = self.private(io, BEGIN).await?;
        if result.error.is_some() {
            if io.state().transaction_status() != TransactionStatus::Idle {
                self.private(io, "ROLLBACK").await?;
            }
            return Ok(false);
        }
        self.wrapped = true;
        Ok(true)
    }

    /// At the ReadyForQuery that ends what the client sent (the upstream is idle): ends the
    /// proxy's transaction as autocommit would have, relays a COMMIT's error, and returns the
    /// ReadyForQuery the client gets instead of `ready` (None when nothing was wrapped).
    pub(super) async fn end_wrap(
        &mut self,
        io: &mut SessionIo,
        ready: &Frame,
    ) -> Result<Option<Frame>> {
        if !self.wrapped || !io.state().upstream_idle() {
            return Ok(None);
        }
        self.wrapped = false;
        match TransactionStatus::decode(ready)? {
            TransactionStatus::InTransaction => {
                let result = self.private(io, "COMMIT").await?;
                if let Some(error) = result.error {
                    // A deferred constraint or a serialization failure at COMMIT: the
                    // statement's own error, as autocommit would have reported it.
                    let replaced = self.failures.replace(&error);
                    io.send_client(replaced.as_ref().unwrap_or(&error));
                }
            }
            TransactionStatus::Failed => {
                self.private(io, "ROLLBACK").await?;
            }
            // The client's own COMMIT or ROLLBACK (in the same extended batch) ended it.
            TransactionStatus::Idle => {}
        }
        Ok(Some(io.state().transaction_status().encode()))
    }

    /// Before the client's next message: the wrapped statement's answers are relayed and its
    /// transaction ended first.
    pub(super) async fn finish_wrap(&mut self, io: &mut SessionIo) -> Result<()> {
        if self.wrapped && io.state().pending_ready() > 0 {
            self.drain(io).await?;
        }
        Ok(())
    }

    /// The client closed its connection with the proxy's transaction open: its statement still
    /// commits, as it would have in autocommit (a failed one rolls back). The statement's
    /// answers are read to the end (and dropped: the client is gone) before the connection
    /// closes; closing a socket with answers unread would reset it, and Postgres would lose
    /// the COMMIT with it.
    pub(super) async fn commit_wrap_on_close(&mut self, io: &mut SessionIo) -> Result<()> {
        if self.wrapped {
            self.drain(io).await?;
        }
        Ok(())
    }
}
