//! Path 2 in the extended protocol: a Parse whose pgml.* calls read columns is relayed as it
//! is and remembered; each Bind of it first runs the rewriter's prefetch query as the proxy's
//! own prepared statement with the client's parameter values, computes the distinct values in
//! batches, prepares the statement again with the values spliced in (under a name of the
//! proxy's own, in the same batch as the Bind) and relays the Bind bound to it: one engine
//! batch instead of one upcall per row.
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
use crate::error::Result;
use crate::metrics::Path;
use crate::net::frame::Frame;
use crate::net::messages::bind::Bind;
use crate::net::messages::close::{Close, Target};
use crate::net::messages::parse::Parse;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::{server_tag, sync};
use crate::session::hook::SessionHook;
use crate::session::io::SessionIo;

/// The proxy's name for a prefetch statement with its values rendered in.
const RENDERED_STATEMENT: &[u8] = b"pgml_proxy_rendered";

/// What the proxy adds to a client's batch for a rendered statement, and the responses to it,
/// which the client never sees: leading messages (the client's unnamed statement prepared
/// again, the rendered statement's Close and Parse) before the Bind, and a Close of the
/// rendered statement before the batch's Sync (its text can be megabytes: it must not stay
/// prepared on a backend, which a transaction pooler may hand to other clients).
#[derive(Debug, Default)]
pub struct AddedMessages {
    /// CloseComplete / ParseComplete responses of leading messages still to come.
    leading: usize,
    /// The rendered statement is prepared: close it before the client's next Sync.
    close_pending: bool,
    /// That Close was sent: its CloseComplete is the last response before ReadyForQuery.
    closing: bool,
    /// A CloseComplete kept back until the next response shows whose it was.
    held: Option<Frame>,
}

impl AddedMessages {
    /// No message of the proxy's own is in the client's batch, nor a response held back:
    /// `on_client_sync` and `hide` would do nothing.
    pub fn is_idle(&self) -> bool {
        self.leading == 0 && !self.close_pending && !self.closing && self.held.is_none()
    }

    /// Before the client's Sync is relayed: closes the rendered statement in the same batch.
    pub fn on_client_sync(&mut self, io: &mut SessionIo) {
        if std::mem::take(&mut self.close_pending) {
            io.send_private(
                &Close {
                    target: Target::Statement,
                    name: RENDERED_STATEMENT,
                }
                .encode(),
            );
            self.closing = true;
        }
    }

    /// Sees each server message first; true when it answers a message of the proxy's own
    /// (and is dropped). A held CloseComplete that turns out to be the client's is relayed.
    pub fn hide(&mut self, frame: &Frame, io: &mut SessionIo) -> bool {
        let tag = frame.tag();
        if let Some(held) = self.held.take() {
            if tag != server_tag::READY_FOR_QUERY {
                io.send_client(&held);
            }
        }
        match tag {
            server_tag::CLOSE_COMPLETE | server_tag::PARSE_COMPLETE if self.leading > 0 => {
                self.leading -= 1;
                return true;
            }
            server_tag::CLOSE_COMPLETE if self.closing => {
                self.held = Some(frame.clone());
                return true;
            }
            // After an error Postgres skips to the Sync: the rest answers nothing.
            server_tag::ERROR_RESPONSE => self.leading = 0,
            server_tag::READY_FOR_QUERY => self.closing = false,
            _ => {}
        }
        false
    }
}

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
        let plan = statement.plan.clone();
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
                self.remember_described(&name, &types)?;
                types
            }
        };
        if types.len() != bind.values.len() {
            // Postgres reports the count mismatch itself.
            io.send_upstream(frame);
            return Ok(());
        }
        // A VOLATILE function in the prefetch query would run twice: the upcall serves the
        // statement instead, which runs everything once.
        let prefetched = if self.any_volatile(io, [&plan]).await? {
            None
        } else {
            // In autocommit, the prefetch and the client's batch share one transaction (`wrap`).
            self.begin_wrap(io).await?;
            let params = BoundParams {
                types: types.clone(),
                bind: &bind,
            };
            let queries = [plan.query.clone()];
            let run = self.run_prefetch(io, &queries, Some(&params)).await?;
            let started = std::time::Instant::now();
            let computed = compute(
                self.shared.engine.as_ref(),
                &self.cache_partition,
                run.keys.iter().cloned(),
            )
            .await;
            self.shared.metrics.embeddings(computed.len());
            tracing::debug!(values = computed.len(), elapsed = ?started.elapsed(), "bound prefetch computed");
            self.finish_prefetch(io, run, &computed, plan.calls.len())
                .await?
        };
        if name.is_empty() {
            // The client's unnamed statement may be gone (the proxy's simple queries drop it)
            // or on another backend (a transaction pooler): prepare it again in the batch of
            // the Bind, where its Describe and the rest of the batch find it.
            io.send_private(&parse);
            self.added.leading += 1;
        }
        let rendered = prefetched.and_then(|values| {
            let encoding = io.state().client_encoding();
            let parsed = Parse::decode(&parse).ok()?;
            let sql = encoding.decode(parsed.sql)?;
            let sql = plan.render_prefetched(&sql, &values);
            encoding.encode(&sql).map(|s| s.into_owned())
        });
        let Some(sql) = rendered else {
            io.send_upstream(frame);
            return Ok(());
        };
        // The statement with the values in it, prepared in the same batch as the client's
        // Bind (a transaction pooler keeps a batch on one backend), under a name of the
        // proxy's own: the client's statements, the unnamed one included, stay as they are.
        io.send_private(
            &Close {
                target: Target::Statement,
                name: RENDERED_STATEMENT,
            }
            .encode(),
        );
        io.send_private(
            &Parse {
                name: RENDERED_STATEMENT,
                sql: &sql,
                param_types: types,
            }
            .encode(),
        );
        self.added.leading += 2;
        self.added.close_pending = true;
        let rebound = Bind {
            statement: RENDERED_STATEMENT,
            ..bind
        };
        io.send_upstream(&rebound.encode());
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
