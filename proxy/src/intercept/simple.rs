//! Path 1 in the simple protocol: a Query whose statements call pgml.embed with constant
//! arguments gets the computed vectors spliced in as `real[]` literals. The same Query may
//! also carry prefetched statements (path 2, see `prefetch`: their values are spliced in
//! too) and upcalled ones (path 3).

use pgml_rewriter::{
    mentions_pgml, plan_simple_query, BindError, Literal, SimpleQueryPlan, StatementPlan,
};

use super::embedding::{bind_calls, compute, lookup};
use super::prefetch::PrefetchRun;
use super::InterceptHook;
use crate::error::Result;
use crate::metrics::Path;
use crate::net::frame::Frame;
use crate::net::messages::query::Query;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::session::io::SessionIo;

impl InterceptHook {
    pub(super) async fn on_query(
        &mut self,
        frame: &Frame,
        sql: &[u8],
        io: &mut SessionIo,
    ) -> Result<()> {
        let encoding = io.state().client_encoding();
        if !mentions_pgml(sql) {
            io.send_upstream(frame);
            return Ok(());
        }
        // Text the proxy cannot read exactly in the session's encoding is Postgres' to read
        // (or to reject); any pgml.embed in it is served by the upcall path.
        let Some(text) = encoding.decode(sql) else {
            io.send_upstream(frame);
            return Ok(());
        };
        let sql: &str = &text;
        if let Some(command) = super::extension::parse(sql) {
            if !self.drain_to_idle(io).await? {
                // Postgres' to answer (or to skip, after an error in the client's batch).
                io.send_upstream(frame);
                return Ok(());
            }
            return self.on_extension_query(&command, io).await;
        }
        let plan = match plan_simple_query(sql, super::plan_options(io)) {
            SimpleQueryPlan::NoPgml => {
                io.send_upstream(frame);
                return Ok(());
            }
            SimpleQueryPlan::LoadDataset(call) => {
                if !self.drain_to_idle(io).await? {
                    io.send_upstream(frame);
                    return Ok(());
                }
                return self.load_dataset(io, frame, &call).await;
            }
            SimpleQueryPlan::Query(plan) => plan,
        };
        let metrics = self.shared.metrics.clone();
        let mut needs_work = false;
        for s in &plan.statements {
            let path = match &s.plan {
                StatementPlan::Unchanged => continue,
                StatementPlan::Constant(_) => Path::Constant,
                StatementPlan::Prefetch(_) => Path::Prefetch,
                StatementPlan::PassThrough { .. } => Path::Upcall,
            };
            needs_work |= path != Path::Upcall;
            metrics.statement(path);
            io.state_mut().clock_mut().note(path);
        }
        if plan
            .statements
            .iter()
            .all(|s| matches!(s.plan, StatementPlan::Unchanged))
        {
            io.send_upstream(frame);
            return Ok(());
        }
        // Inside the client's extended-protocol batch (or after an error in it: Postgres skips
        // this Query then) the upstream runs none of the proxy's own queries: constants are
        // still computed here, the rest is left to the upcall path.
        let idle = self.drain_to_idle(io).await?;
        if idle {
            self.ensure_shim(io).await?;
        }
        if !needs_work || io.state().transaction_status() == TransactionStatus::Failed {
            io.send_upstream(frame);
            return Ok(());
        }

        // A simple Query has no parameter values: a `$n` in a constant call is Postgres' 42P02.
        let no_params = |n: usize| -> std::result::Result<Option<String>, BindError> {
            Err(BindError::NoParameter(n))
        };
        let constant_keys = bind_calls(plan.constant_calls(), &no_params);
        // A VOLATILE function in a prefetch query would run twice: the upcall serves those
        // statements instead, which runs everything once.
        let prefetch = if !idle || self.any_volatile(io, plan.prefetch_queries()).await? {
            PrefetchRun::none()
        } else {
            // One statement with prefetched calls, in autocommit: the prefetch and the statement
            // share one transaction (see `wrap`). A string of several statements keeps its own
            // transaction structure (it may hold BEGIN, COMMIT or VACUUM).
            if let [only] = plan.statements.as_slice() {
                if matches!(only.plan, StatementPlan::Prefetch(_)) {
                    self.begin_wrap(io).await?;
                }
            }
            self.run_prefetch_queries(io, &plan).await?
        };

        let wanted = constant_keys
            .iter()
            .filter_map(|k| k.as_ref().ok().and_then(Option::clone))
            .chain(prefetch.keys.iter().cloned());
        let started = std::time::Instant::now();
        let computed = compute(self.shared.engine.as_ref(), &self.cache_partition, wanted).await;
        metrics.embeddings(computed.len());
        tracing::debug!(values = computed.len(), elapsed = ?started.elapsed(), "embeddings computed");

        let call_sites = plan.prefetch_queries().map(|p| p.calls.len()).sum();
        let prefetched = self
            .finish_prefetch(io, prefetch, &computed, call_sites)
            .await?;

        if plan.is_unchanged_text() && prefetched.is_none() {
            io.send_upstream(frame);
            return Ok(());
        }
        // A failed call becomes a text Postgres rejects as a `real[]`: the statement it is in
        // fails where Postgres reaches it; statements before it run as Postgres runs them.
        let values: Vec<Literal> = constant_keys
            .into_iter()
            .map(|key| match lookup(key, &computed) {
                Ok(Some(v)) => Literal::Vector(v),
                Ok(None) => Literal::Null,
                Err(failure) => Literal::Invalid(self.failures.remember(failure)),
            })
            .collect();
        let rewritten = plan.render(sql, &values, prefetched.as_ref());
        match encoding.encode(&rewritten) {
            Some(bytes) => io.send_upstream(&Query::encode(bytes)),
            None => io.send_upstream(frame),
        }
        Ok(())
    }
}
