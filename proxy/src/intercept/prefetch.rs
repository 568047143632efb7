//! Path 2: row-dependent arguments. The proxy runs the rewriter's prefetch queries on the
//! client's own upstream session (so transaction visibility is exact), computes the distinct
//! values, loads them into the session's temp table `pgml_prefetch` with binary COPY, and the
//! original statement then runs unchanged: the shim finds each value there. Inside an
//! explicit transaction all of it runs in a savepoint, so a failure leaves the client's
//! transaction as it was (the shim then upcalls instead).

use std::collections::HashSet;

use pgml_rewriter::QueryPlan;

use super::embedding::{Computed, EmbedKey};
use super::private::BoundParams;
use super::InterceptHook;
use crate::error::Result;
use crate::net::messages::error_response::Fields;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::pgbinary::{PrefetchCopy, PrefetchValue};
use crate::session::io::SessionIo;

/// CopyData chunk size for the prefetch table.
const COPY_CHUNK: usize = 1 << 20;

const SAVEPOINT: &str = "SAVEPOINT pgml_proxy_prefetch";
const ROLLBACK: &str = "ROLLBACK TO SAVEPOINT pgml_proxy_prefetch";
const RELEASE: &str = "RELEASE SAVEPOINT pgml_proxy_prefetch";

/// The most bytes of chunks one statement's prefetch computes (as for one pgml.chunk call):
/// past it the remaining calls are left to the upcall, one at a time.
const MAX_PREFETCH_CHUNK_BYTES: usize = pgml_chunk::MAX_OUTPUT_BYTES;

/// The prefetch queries of a statement, run; what to embed and load.
pub(super) struct PrefetchRun {
    /// The pgml.embed argument values the statement will need.
    pub(super) keys: Vec<EmbedKey>,
    /// The pgml.chunk argument values (the splitter in `model`); chunked in `finish_prefetch`.
    chunk_keys: Vec<EmbedKey>,
    ran: bool,
    in_transaction: bool,
}

impl InterceptHook {
    /// Runs the plan's prefetch queries (the upstream must be idle) and collects their values.
    pub(super) async fn run_prefetch_queries(
        &mut self,
        io: &mut SessionIo,
        plan: &QueryPlan,
    ) -> Result<PrefetchRun> {
        let queries: Vec<String> = plan.prefetch_queries().map(|p| p.query.clone()).collect();
        self.run_prefetch(io, &queries, None).await
    }

    /// Runs `queries` (the upstream must be idle) and collects their values; with `bound`, each
    /// runs as a private prepared statement with the client's Bind values for its `$n`.
    pub(super) async fn run_prefetch(
        &mut self,
        io: &mut SessionIo,
        queries: &[String],
        bound: Option<&BoundParams<'_>>,
    ) -> Result<PrefetchRun> {
        let in_transaction = io.state().transaction_status() == TransactionStatus::InTransaction;
        let mut keys = Vec::new();
        let mut chunk_keys = Vec::new();
        if queries.is_empty() {
            return Ok(PrefetchRun {
                keys,
                chunk_keys,
                ran: false,
                in_transaction,
            });
        }
        if in_transaction {
            self.private(io, SAVEPOINT).await?;
        }
        let encoding = io.state().client_encoding();
        for query in queries {
            let Some(query) = encoding.encode(query) else {
                continue;
            };
            let started = std::time::Instant::now();
            let result = match bound {
                Some(params) => self.private_bound(io, &query, params).await?,
                None => self.private(io, &query).await?,
            };
            tracing::debug!(rows = result.rows.len(), elapsed = ?started.elapsed(), "prefetch query ran");
            if result.truncated {
                tracing::debug!("prefetch result over its memory budget; the shim will upcall");
                continue;
            }
            if let Some(error) = &result.error {
                let fields = Fields::decode(error);
                tracing::debug!(error = ?fields.message(), "prefetch query failed; the shim will upcall");
                if in_transaction {
                    self.private(io, ROLLBACK).await?;
                }
                continue;
            }
            for row in result.rows {
                if let [Some(function), Some(model), Some(text), Some(kwargs)] = row.as_slice() {
                    let (Some(model), Some(text), Some(kwargs)) = (
                        encoding.decode(model),
                        encoding.decode(text),
                        encoding.decode(kwargs),
                    ) else {
                        continue;
                    };
                    let key = EmbedKey {
                        model: model.into_owned(),
                        kwargs: kwargs.into_owned(),
                        text: text.into_owned(),
                    };
                    match function.as_ref() {
                        b"e" => keys.push(key),
                        b"c" => chunk_keys.push(key),
                        _ => {}
                    }
                }
            }
        }
        Ok(PrefetchRun {
            keys,
            chunk_keys,
            ran: true,
            in_transaction,
        })
    }

    /// Loads the computed values into the prefetch table and closes the savepoint.
    pub(super) async fn finish_prefetch(
        &mut self,
        io: &mut SessionIo,
        mut run: PrefetchRun,
        computed: &Computed,
    ) -> Result<()> {
        let chunks = chunk_all(std::mem::take(&mut run.chunk_keys)).await;
        if !run.keys.is_empty() || !chunks.is_empty() {
            let started = std::time::Instant::now();
            let loaded = self.load_prefetch(io, &run.keys, computed, &chunks).await?;
            tracing::debug!(rows = run.keys.len(), chunked = chunks.len(), loaded, elapsed = ?started.elapsed(), "prefetch table loaded");
            if !loaded && run.in_transaction {
                self.private(io, ROLLBACK).await?;
            }
        }
        if run.ran && run.in_transaction {
            self.private(io, RELEASE).await?;
        }
        Ok(())
    }

    /// Empties the prefetch table once the statement it served has ended (the upstream is
    /// idle): the values live no longer than they are needed. In a failed transaction it cannot
    /// run; the next chance is taken (the table is this session's alone meanwhile).
    pub(super) async fn empty_prefetch(&mut self, io: &mut SessionIo) -> Result<()> {
        if !self.prefetched || io.state().transaction_status() == TransactionStatus::Failed {
            return Ok(());
        }
        self.prefetched = false;
        // Not a simple query: that would drop the client's unnamed prepared statement.
        let result = self
            .private_unnamed_safe(io, b"TRUNCATE pg_temp.pgml_prefetch")
            .await?;
        if let Some(error) = result.error {
            tracing::warn!(error = ?Fields::decode(&error).message(), "could not empty the prefetch table");
        }
        Ok(())
    }

    /// Fills the session's prefetch table with the computed values; false when it could not.
    async fn load_prefetch(
        &mut self,
        io: &mut SessionIo,
        keys: &[EmbedKey],
        computed: &Computed,
        chunks: &[(EmbedKey, Vec<String>)],
    ) -> Result<bool> {
        let setup = "CREATE TEMP TABLE IF NOT EXISTS pgml_prefetch \
                     (transformer text, input text, kwargs jsonb, embedding real[], chunks text[]); \
                     CREATE INDEX IF NOT EXISTS pgml_prefetch_input ON pgml_prefetch USING hash (input); \
                     TRUNCATE pgml_prefetch";
        let result = self.private(io, setup).await?;
        if result.error.is_some() {
            return Ok(false);
        }
        let encoding = io.state().client_encoding();
        let mut copy = PrefetchCopy::new();
        let mut parts = Vec::new();
        let mut seen = HashSet::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            let encoded = (
                encoding.encode(&key.model),
                encoding.encode(&key.text),
                encoding.encode(&key.kwargs),
            );
            if let (Some(Ok(v)), (Some(model), Some(text), Some(kwargs))) =
                (computed.get(key), encoded)
            {
                copy.row(&model, &text, &kwargs, PrefetchValue::Embedding(v));
                if copy.len() >= COPY_CHUNK {
                    parts.push(copy.take());
                }
            }
        }
        for (key, pieces) in chunks {
            let encoded = (
                encoding.encode(&key.model),
                encoding.encode(&key.text),
                encoding.encode(&key.kwargs),
            );
            let pieces: Option<Vec<Vec<u8>>> = pieces
                .iter()
                .map(|p| encoding.encode(p).map(|b| b.into_owned()))
                .collect();
            if let ((Some(splitter), Some(text), Some(kwargs)), Some(pieces)) = (encoded, pieces) {
                copy.row(&splitter, &text, &kwargs, PrefetchValue::Chunks(&pieces));
                if copy.len() >= COPY_CHUNK {
                    parts.push(copy.take());
                }
            }
        }
        parts.push(copy.finish());
        let mut parts = parts.into_iter();
        self.prefetched = true;
        let (result, _) = self
            .copy_in(
                io,
                "COPY pgml_prefetch (transformer, input, kwargs, embedding, chunks) \
                 FROM STDIN (FORMAT binary)",
                || Ok(parts.next()),
            )
            .await?;
        Ok(result.error.is_none())
    }
}

/// Chunks every distinct pgml.chunk call of a statement off the async runtime, within
/// [`MAX_PREFETCH_CHUNK_BYTES`] in all. A call that fails (unknown splitter, bad kwargs) or
/// does not fit is left out: the shim upcalls for it, and the upcall raises its error.
async fn chunk_all(mut keys: Vec<EmbedKey>) -> Vec<(EmbedKey, Vec<String>)> {
    if keys.is_empty() {
        return Vec::new();
    }
    keys.sort_unstable_by(|a, b| {
        (&a.model, &a.kwargs, &a.text).cmp(&(&b.model, &b.kwargs, &b.text))
    });
    keys.dedup();
    let work = move || {
        let mut out = Vec::with_capacity(keys.len());
        let mut total = 0usize;
        for key in keys {
            let Ok(kwargs) = serde_json::from_str::<serde_json::Value>(&key.kwargs) else {
                continue;
            };
            let Ok(pieces) = pgml_chunk::chunk(&key.model, &key.text, &kwargs) else {
                continue;
            };
            total = total.saturating_add(pieces.iter().map(String::len).sum::<usize>());
            if total > MAX_PREFETCH_CHUNK_BYTES {
                tracing::debug!("prefetched chunks over their memory budget; the shim will upcall");
                break;
            }
            out.push((key, pieces));
        }
        out
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(out) => out,
        Err(e) => {
            tracing::warn!(error = %e, "pgml.chunk prefetch task failed; the shim will upcall");
            Vec::new()
        }
    }
}
