//! The session's side of an upcall: a NOTICE the shim raised is answered, and when no answer
//! can be written the statement waiting for it is cancelled with the reason.

use std::sync::Arc;
use std::time::Instant;

use super::{
    flushed_by_shim, raising_function, AnswerError, UpcallFunction, UpcallRequest,
    CANCEL_REQUEST_CODE, FLUSH_MARKER, MARKER,
};
use crate::error::{ProxyError, UpstreamError};
use crate::intercept::InterceptHook;
use crate::metrics::Path;
use crate::net::frame::Frame;
use crate::net::messages::error_response::{self, Fields};
use crate::net::messages::server_tag;
use crate::session::io::SessionIo;

/// Stream ids a session remembers until its transaction ends.
const MAX_SESSION_STREAMS: usize = 1024;

impl InterceptHook {
    /// Answers the shim's upcall NOTICE (its text in the session's client encoding).
    /// False when the NOTICE is not one (the caller decides whether the client sees it).
    /// When no answer can be written, the client gets a WARNING that says why at once (a
    /// NOTICE may arrive mid-statement; an error may not), and the statement waiting for the
    /// answer is cancelled rather than left to time out.
    pub(in crate::intercept) async fn answer_if_upcall(
        &mut self,
        frame: &Frame,
        io: &mut SessionIo,
    ) -> bool {
        let fields = Fields::decode_in(frame, io.state().client_encoding());
        if fields.message() == Some(FLUSH_MARKER) {
            // Its work (the server flushed its output) is done; the client never sees it.
            return flushed_by_shim(fields.get(b'W'));
        }
        let Some(message) = fields.message().filter(|m| m.starts_with(MARKER)) else {
            return false;
        };
        // A NOTICE any other code raised (a client's RAISE imitating the marker) is the
        // client's own: relayed as it is, never answered.
        let Some(streamed) = raising_function(fields.get(b'W')) else {
            return false;
        };
        let Some(mut request) = UpcallRequest::from_notice(message, fields.get(b'D')) else {
            tracing::warn!("malformed upcall notice dropped");
            return true;
        };
        // stream_open reads its answer piece by piece, which only pgml.transform_stream's
        // answer is written as (through upcall_call, it is collected like the others).
        if streamed && request.function != (UpcallFunction::Transform { stream: true }) {
            tracing::warn!("upcall notice from the wrong shim function dropped");
            return true;
        }
        request.streamed = streamed;
        request.cache_partition = self.cache_partition.clone();
        io.state_mut().clock_mut().note_running(Path::Upcall);
        let started = Instant::now();
        let id = request.id.clone();
        let answered = self.shared.upcall.answer(&self.database, request).await;
        self.shared.metrics.upcall(started.elapsed());
        let why = match answered {
            // A stream's rows are read after this statement may have ended (a cursor's next
            // FETCH): its reader and writer remove them, not the end of the statement.
            Ok(()) if streamed => {
                // Bounded: the oldest (most likely finished: a writer leaves `Streams` when
                // done) go first in a transaction that opens streams in a loop.
                if self.streams.len() >= MAX_SESSION_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push(id);
                return true;
            }
            Ok(()) => {
                self.answered.push(id);
                return true;
            }
            Err(AnswerError::Failed(e)) => {
                tracing::warn!(error = %e, "could not answer an upcall");
                ProxyError::Service(e)
            }
            Err(AnswerError::TooManyConnections(e)) => {
                tracing::warn!(database = %self.database, error = %e, "could not answer an upcall");
                ProxyError::Upstream(UpstreamError {
                    // too_many_connections
                    sqlstate: "53300".into(),
                    message: e,
                    detail: None,
                })
            }
            Err(AnswerError::Refused(e)) => {
                tracing::warn!(database = %self.database, error = %e, "refused to answer an upcall");
                ProxyError::AnswerRefused(e)
            }
        };
        let warning = error_response::of_error("WARNING", &why);
        io.send_client(&Frame::new(server_tag::NOTICE_RESPONSE, warning.body()));
        self.cancel_waiting(io, Arc::new(why));
        true
    }

    /// Ends the statement waiting for an answer that will not come, with a CancelRequest for
    /// the session's upstream process; its 57014 is then replaced by `why`.
    fn cancel_waiting(&mut self, io: &SessionIo, why: Arc<ProxyError>) {
        let (Some(key), Some(upstream)) = (
            io.state().backend_key(),
            self.shared.config.cancel_via.clone(),
        ) else {
            return;
        };
        let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        body.extend_from_slice(key);
        self.failures.cancelling(why);
        tokio::spawn(async move {
            if let Err(e) = upstream.cancel(&body).await {
                tracing::warn!(error = %e, "could not cancel a statement waiting for an upcall");
            }
        });
    }

    /// At a ReadyForQuery: once the session is outside a transaction, no cursor or statement
    /// reading this session's streams is left, and their writers stop.
    pub(in crate::intercept) fn end_streams_if_idle(&mut self, io: &SessionIo) {
        use crate::net::messages::ready_for_query::TransactionStatus;
        if self.streams.is_empty() || io.state().transaction_status() != TransactionStatus::Idle {
            return;
        }
        let ids = std::mem::take(&mut self.streams);
        self.shared.upcall.abandon_streams(&ids);
    }

    /// At a ReadyForQuery after a `CLOSE` inside a transaction: when no cursor of the session
    /// can read a stream any more (none left whose statement calls pgml.transform_stream), the
    /// writers of its streams stop at once rather than at the end of the transaction. With
    /// such a cursor still open, which stream it reads is not known: they go on.
    pub(in crate::intercept) async fn end_streams_if_unread(
        &mut self,
        io: &mut SessionIo,
    ) -> crate::error::Result<()> {
        use crate::net::messages::ready_for_query::TransactionStatus;
        if !std::mem::take(&mut self.cursor_closed)
            || self.streams.is_empty()
            || io.state().transaction_status() != TransactionStatus::InTransaction
            || !io.state().upstream_idle()
        {
            return Ok(());
        }
        // The pattern is built so that this query's own text does not match it.
        let reading = self
            .private(
                io,
                "SELECT count(*) FROM pg_catalog.pg_cursors \
                 WHERE pg_catalog.strpos(pg_catalog.lower(statement), 'transform' OPERATOR(pg_catalog.||) '_stream') > 0",
            )
            .await?;
        let none_left = reading.error.is_none()
            && matches!(reading.rows.as_slice(), [row] if matches!(row.as_slice(), [Some(n)] if n.as_ref() == b"0"));
        if none_left {
            let ids = std::mem::take(&mut self.streams);
            self.shared.upcall.abandon_streams(&ids);
        }
        Ok(())
    }

    /// Deletes the answers of the statement that just ended (in the background).
    pub(in crate::intercept) fn forget_answers(&mut self) {
        if self.answered.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.answered);
        let shared = self.shared.clone();
        let database = self.database.clone();
        tokio::spawn(async move { shared.upcall.forget(&database, ids).await });
    }
}
