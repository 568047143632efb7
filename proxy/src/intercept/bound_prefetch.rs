//! Path 2 in the extended protocol: a Parse whose pgml.* calls read columns is relayed as it
//! is and remembered; each Bind of it first runs the rewriter's prefetch query as the proxy's
//! own prepared statement with the client's parameter values, computes the distinct values in
//! batches and loads them into the session's prefetch table, then relays the Bind: the
//! statement runs unchanged and the shim finds every value there (one engine batch instead of
//! one upcall per row).
//!
//! The upstream must be idle for that. A Bind in a batch that so far only prepared or
//! described statements (what drivers send before the first execution: Parse, Bind, Describe,
//! Execute, Sync) gets the batch ended early with a Sync of the proxy's own, whose
//! ReadyForQuery the client never sees; nothing had run in it, so nothing commits early. If
//! that Sync reveals an error (a Parse that failed), Postgres would have skipped the rest of
//! the batch: the proxy skips the client's messages up to its Sync the same way. A Bind after
//! an Execute in the same batch is left to the upcall path (ending the batch there would
//! commit what ran before it).

use pgml_rewriter::PrefetchPlan;

use super::embedding::compute;
use super::private::BoundParams;
use super::InterceptHook;
use crate::app::metrics::Path;
use crate::error::Result;
use crate::net::frame::Frame;
use crate::net::messages::bind::Bind;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::{server_tag, sync};
use crate::session::hook::SessionHook;
use crate::session::io::SessionIo;

/// A prepared statement with row-dependent pgml.* calls.
#[derive(Debug)]
pub struct PrefetchStatement {
    /// The rewriter's plan (the prefetch query reads the statement's own `$n`).
    pub plan: PrefetchPlan,
    /// The parameter types the client declared.
    pub declared: Vec<u32>,
    /// The parameter types Postgres assigned, once described.
    pub described: Option<Vec<u32>>,
    /// The client's Parse (to prepare the unnamed statement again after private queries).
    pub parse: Frame,
}

impl InterceptHook {
    /// Serves a Bind of a prefetch statement (see the module comment); the Bind itself is
    /// relayed (or skipped) here.
    pub(super) async fn bind_prefetch(&mut self, frame: &Frame, io: &mut SessionIo) -> Result<()> {
        if !self.batch_clean {
            io.send_upstream(frame);
            return Ok(());
        }
        io.state_mut().clock_mut().note(Path::Prefetch);
        self.drain(io).await?;
        if !io.state().upstream_idle() && self.end_batch_early(io).await? {
            // The batch failed before this Bind: Postgres skips to the Sync, and so do we.
            self.skip_to_sync = true;
            return Ok(());
        }
        let bind = Bind::decode(frame)?;
        let name = bind.statement.to_owned();
        if io.state().transaction_status() == TransactionStatus::Failed {
            io.send_upstream(frame);
            return Ok(());
        }
        self.ensure_shim(io).await?;
        let Some(statement) = self.prefetch_statements.get(&name) else {
            io.send_upstream(frame);
            return Ok(());
        };
        let declared_all = !statement.declared.is_empty()
            && statement.declared.len() == bind.values.len()
            && statement.declared.iter().all(|&t| t != 0);
        let known = match &statement.described {
            Some(types) => Some(types.clone()),
            None => declared_all.then(|| statement.declared.clone()),
        };
        let query = statement.plan.query.clone();
        // Frames share their bytes: this copies no SQL.
        let parse = statement.parse.clone();
        let types = match known {
            Some(types) => types,
            None => {
                let described = self.private_describe(io, &name).await?;
                let Some(types) = described else {
                    // Postgres will report what is wrong with the statement at the Bind.
                    io.send_upstream(frame);
                    return Ok(());
                };
                if let Some(s) = self.prefetch_statements.get_mut(&name) {
                    s.described = Some(types.clone());
                }
                types
            }
        };
        if types.len() != bind.values.len() {
            // Postgres reports the count mismatch itself.
            io.send_upstream(frame);
            return Ok(());
        }
        let params = BoundParams { types, bind: &bind };
        let queries = [query];
        let run = self.run_prefetch(io, &queries, Some(&params)).await?;
        let started = std::time::Instant::now();
        let computed = compute(self.shared.engine.as_ref(), run.keys.iter().cloned()).await;
        self.shared.metrics.embeddings(computed.len());
        tracing::debug!(values = computed.len(), elapsed = ?started.elapsed(), "bound prefetch computed");
        self.finish_prefetch(io, run, &computed).await?;
        if name.is_empty() {
            // The proxy's simple queries dropped the unnamed statement: prepare it again.
            self.private_prepare(io, &parse).await?;
        }
        io.send_upstream(frame);
        Ok(())
    }

    /// Ends the client's open batch with a Sync of the proxy's own, relaying the responses
    /// of what it held (ParseComplete, descriptions, errors) and keeping its ReadyForQuery.
    /// True when the batch had failed.
    async fn end_batch_early(&mut self, io: &mut SessionIo) -> Result<bool> {
        io.send_private(&sync());
        let mut failed = false;
        loop {
            let frame = io.recv_upstream().await?;
            if frame.tag() == server_tag::READY_FOR_QUERY {
                io.state_mut()
                    .end_batch_privately(TransactionStatus::decode(&frame)?);
                return Ok(failed);
            }
            failed |= frame.tag() == server_tag::ERROR_RESPONSE;
            io.state_mut().on_server(&frame)?;
            self.on_server_message(frame, io).await?;
        }
    }
}
