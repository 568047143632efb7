//! Path 2: row-dependent arguments. The proxy runs the rewriter's prefetch queries on the
//! client's own upstream session (so transaction visibility is exact), computes the distinct
//! values, and splices them into the statement itself: each call becomes its `pgml_proxy`
//! stand-in with the values beside it (see `Prefetched`). Nothing is left in the session, so a
//! transaction-mode pooler may run the statement on another backend than the prefetch, and the
//! client's role can neither see nor alter another statement's values. Inside an explicit
//! transaction the prefetch queries run in a savepoint, so a failure leaves the client's
//! transaction as it was (the stand-in then upcalls instead).

use std::collections::HashSet;

use pgml_rewriter::{format_real_array, quote_literal, Prefetched, QueryPlan};
use serde_json::{Map, Value};

use super::embedding::{Computed, EmbedKey};
use super::private::BoundParams;
use super::InterceptHook;
use crate::error::Result;
use crate::net::messages::error_response::Fields;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::session::io::SessionIo;

const SAVEPOINT: &str = "SAVEPOINT pgml_proxy_prefetch";
const ROLLBACK: &str = "ROLLBACK TO SAVEPOINT pgml_proxy_prefetch";
const RELEASE: &str = "RELEASE SAVEPOINT pgml_proxy_prefetch";

/// The most memory of chunks one statement's prefetch computes, counted as the chunk crate
/// counts one call's (`CHUNK_OVERHEAD` a chunk besides its text): past it the remaining calls
/// are left to the upcall, one at a time.
const MAX_PREFETCH_CHUNK_BYTES: usize = pgml_chunk::MAX_OUTPUT_BYTES;

/// The most chunks one statement's prefetch splices into it: each is an element of an
/// `ARRAY[...]` that the proxy holds, quotes and joins whole (a million one-letter chunks
/// grew the proxy by 143 MiB that way). Past it the remaining calls are left to the upcall,
/// which writes its chunks as rows in bounded batches.
const MAX_PREFETCH_CHUNKS: usize = 65_536;

/// The most distinct pgml.transform requests one statement's prefetch asks for (the generator
/// runs at most `pgml_engine::DEFAULT_GENERATE_IN_FLIGHT` at a time per server, the others
/// wait their turn): past it the remaining rows are left to the upcall, one at a time.
const MAX_PREFETCH_TRANSFORMS: usize = 4096;

/// A pgml.transform request's result, or why it failed.
type Answer = std::result::Result<Value, crate::error::ProxyError>;

/// The most SQL text the prefetched values may add to one statement, all its call sites
/// together (each call carries the whole set: a statement with many calls must not multiply
/// it; about 4 MB per 1000 vectors of 384 dimensions): past it the remaining values are left
/// to the upcall.
const MAX_RENDERED_TEXT: usize = 256 * 1024 * 1024;

/// The prefetch queries of a statement, run; what to embed and load.
pub(super) struct PrefetchRun {
    /// The pgml.embed argument values the statement will need.
    pub(super) keys: Vec<EmbedKey>,
    /// The pgml.chunk argument values (the splitter in `model`); chunked in `finish_prefetch`.
    chunk_keys: Vec<EmbedKey>,
    /// The pgml.transform requests (`pgml_proxy.transform_key` texts); answered in
    /// `finish_prefetch`.
    transform_keys: Vec<String>,
    ran: bool,
    in_transaction: bool,
}

impl PrefetchRun {
    /// Nothing prefetched: the statements go as they are.
    pub(super) fn none() -> Self {
        PrefetchRun {
            keys: Vec::new(),
            chunk_keys: Vec::new(),
            transform_keys: Vec::new(),
            ran: false,
            in_transaction: false,
        }
    }
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
        let mut transform_keys = Vec::new();
        if queries.is_empty() {
            return Ok(PrefetchRun {
                keys,
                chunk_keys,
                transform_keys,
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
                        // The whole request is the key, in the transformer column.
                        b"t" => transform_keys.push(key.model),
                        _ => {}
                    }
                }
            }
        }
        Ok(PrefetchRun {
            keys,
            chunk_keys,
            transform_keys,
            ran: true,
            in_transaction,
        })
    }

    /// Closes the savepoint and chunks what the statement splits; returns the values to splice
    /// into it, or None when the statement should go as it is (nothing ran, or the shim in this
    /// database is not the one whose stand-ins the values are for).
    /// `call_sites` is how many calls the values are spliced into.
    pub(super) async fn finish_prefetch(
        &mut self,
        io: &mut SessionIo,
        mut run: PrefetchRun,
        computed: &Computed,
        call_sites: usize,
    ) -> Result<Option<Prefetched>> {
        if !run.ran {
            return Ok(None);
        }
        if run.in_transaction {
            self.private(io, RELEASE).await?;
        }
        if !self.shared.installed.contains(&self.database).await {
            tracing::debug!(database = %self.database, "the current shim is not installed here; the statement goes as it is");
            return Ok(None);
        }
        let chunks = chunk_all(std::mem::take(&mut run.chunk_keys)).await;
        let budget = MAX_RENDERED_TEXT / call_sites.max(1);
        let answers = self
            .transform_all(std::mem::take(&mut run.transform_keys), budget)
            .await;
        Ok(prefetched(&run.keys, computed, &chunks, &answers, budget))
    }

    /// Asks the model servers for every distinct pgml.transform request of the statement at
    /// once (at most [`MAX_PREFETCH_TRANSFORMS`], answers of at most `max_bytes`; the others
    /// are left to the upcall).
    async fn transform_all(
        &self,
        mut keys: Vec<String>,
        max_bytes: usize,
    ) -> Vec<(String, Answer)> {
        if keys.is_empty() {
            return Vec::new();
        }
        keys.sort_unstable();
        keys.dedup();
        if keys.len() > MAX_PREFETCH_TRANSFORMS {
            tracing::debug!(
                requests = keys.len(),
                "more pgml.transform requests than a prefetch answers; the shim will upcall the rest"
            );
            keys.truncate(MAX_PREFETCH_TRANSFORMS);
        }
        let started = std::time::Instant::now();
        let answers = self
            .shared
            .upcall
            .transform_prefetched(keys, max_bytes)
            .await;
        tracing::debug!(requests = answers.len(), elapsed = ?started.elapsed(), "pgml.transform requests answered");
        answers
    }
}

/// The values to splice: `keys` maps transformer -> kwargs -> input to the 1-based bounds of
/// each value in the flat array beside it (as `pgml_proxy.prefetched_bounds` reads it). A value
/// that failed, or that would take the text past `budget` bytes (keys and values), is left out
/// (the stand-in upcalls for it, and the upcall raises its error). None when a text cannot be
/// quoted.
fn prefetched(
    keys: &[EmbedKey],
    computed: &Computed,
    chunks: &[(EmbedKey, Vec<String>)],
    answers: &[(String, Answer)],
    budget: usize,
) -> Option<Prefetched> {
    // What a key adds to the quoted jsonb map, at most: a control character grows to a
    // 6-byte JSON escape whose backslash the SQL literal doubles.
    let key_len = |k: &EmbedKey| 7 * (k.model.len() + k.kwargs.len() + k.text.len()) + 32;
    let mut used = 0usize;
    let mut embed_keys = Map::new();
    let mut flat = String::from("{");
    let mut count = 0usize;
    let mut seen = HashSet::new();
    for key in keys {
        let Some(Ok(vector)) = computed.get(key) else {
            continue;
        };
        if vector.is_empty() || !seen.insert(key) {
            continue;
        }
        let text = format_real_array(vector);
        let elements = text.strip_prefix('{')?.strip_suffix('}')?;
        used = used.saturating_add(elements.len() + 1 + key_len(key));
        if used > budget {
            tracing::debug!("prefetched values over their text budget; the shim will upcall");
            break;
        }
        if count > 0 {
            flat.push(',');
        }
        flat.push_str(elements);
        let first = count + 1;
        count += vector.len();
        insert_bounds(&mut embed_keys, key, first, count);
    }
    flat.push('}');

    let mut chunk_keys = Map::new();
    let mut pieces = Vec::new();
    for (key, chunked) in chunks {
        let quoted: Option<Vec<String>> = chunked.iter().map(|c| quote_literal(c).ok()).collect();
        let Some(quoted) = quoted else {
            continue;
        };
        used =
            used.saturating_add(quoted.iter().map(|q| q.len() + 1).sum::<usize>() + key_len(key));
        if used > budget {
            tracing::debug!("prefetched chunks over their text budget; the shim will upcall");
            break;
        }
        let first = pieces.len() + 1;
        pieces.extend(quoted);
        insert_bounds(&mut chunk_keys, key, first, pieces.len());
    }
    // pgml.transform: request key -> {"result": ...} or {"error": [sqlstate, message]} (the
    // stand-in raises it where Postgres reaches the call, as the upcall would).
    let mut transforms = Map::new();
    for (key, answer) in answers {
        let entry = match answer {
            Ok(result) => serde_json::json!({ "result": result }),
            Err(e) => serde_json::json!({ "error": [e.sqlstate(), e.to_string()] }),
        };
        // JSON-escaped once, its quotes doubled in the SQL literal at most.
        used = used.saturating_add(2 * (key.len() + entry.to_string().len()) + 8);
        if used > budget {
            tracing::debug!("pgml.transform answers over their text budget; the shim will upcall");
            break;
        }
        transforms.insert(key.clone(), entry);
    }
    let json = |map: Map<String, Value>| -> Option<String> {
        Some(format!(
            "{}::pg_catalog.jsonb",
            quote_literal(&Value::Object(map).to_string()).ok()?
        ))
    };
    Some(Prefetched {
        embed_keys: json(embed_keys)?,
        embed_values: format!("'{flat}'::pg_catalog.float4[]"),
        chunk_keys: json(chunk_keys)?,
        chunk_values: format!("ARRAY[{}]::pg_catalog.text[]", pieces.join(",")),
        transform_values: json(transforms)?,
    })
}

/// Records `[first, last]` for `key` under transformer -> kwargs -> input.
fn insert_bounds(map: &mut Map<String, Value>, key: &EmbedKey, first: usize, last: usize) {
    let by_kwargs = map
        .entry(key.model.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(by_kwargs) = by_kwargs else {
        return;
    };
    let by_input = by_kwargs
        .entry(key.kwargs.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(by_input) = by_input {
        by_input.insert(key.text.clone(), Value::from(vec![first, last]));
    }
}

/// Chunks every distinct pgml.chunk call of a statement off the async runtime, within
/// [`MAX_PREFETCH_CHUNK_BYTES`] and [`MAX_PREFETCH_CHUNKS`] in all: a call is abandoned as soon
/// as it would pass them, before its chunks are all made. A call that fails (unknown splitter,
/// bad kwargs, a chunk limit) or does not fit is left out: the shim upcalls for it, and the
/// upcall raises its error.
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
        let (mut bytes, mut count) = (0usize, 0usize);
        for key in keys {
            let Ok(kwargs) = serde_json::from_str::<serde_json::Value>(&key.kwargs) else {
                continue;
            };
            let mut pieces = Vec::new();
            let (mut key_bytes, mut over) = (0usize, false);
            let chunked = pgml_chunk::chunk_each(&key.model, &key.text, &kwargs, |chunk| {
                key_bytes += chunk.len() + pgml_chunk::CHUNK_OVERHEAD;
                if bytes + key_bytes > MAX_PREFETCH_CHUNK_BYTES
                    || count + pieces.len() >= MAX_PREFETCH_CHUNKS
                {
                    over = true;
                    return std::ops::ControlFlow::Break(());
                }
                pieces.push(chunk.to_owned());
                std::ops::ControlFlow::Continue(())
            });
            if over {
                tracing::debug!("prefetched chunks over their budget; the shim will upcall");
                break;
            }
            if chunked.is_ok() {
                bytes += key_bytes;
                count += pieces.len();
                out.push((key, pieces));
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(text: &str) -> EmbedKey {
        EmbedKey {
            model: "m".into(),
            kwargs: "{}".into(),
            text: text.into(),
        }
    }

    fn chunk_key(text: String, kwargs: &str) -> EmbedKey {
        EmbedKey {
            model: "recursive_character".into(),
            kwargs: kwargs.into(),
            text,
        }
    }

    #[tokio::test]
    async fn chunks_past_the_prefetch_budget_are_left_to_the_upcall() {
        let one_each = r#"{"chunk_size": 1, "chunk_overlap": 0}"#;
        let kwargs: serde_json::Value = serde_json::from_str(one_each).unwrap();
        // Keys are chunked in order of their text: "A..." < "a..." < "b...".
        let small = chunk_key("A few words".into(), one_each);
        let small_chunks = pgml_chunk::chunk(&small.model, &small.text, &kwargs).unwrap();
        let fill = MAX_PREFETCH_CHUNKS - small_chunks.len();
        let just_fits = chunk_key("a".repeat(fill), one_each);
        let over = chunk_key("b".into(), one_each);
        let got = chunk_all(vec![over.clone(), just_fits.clone(), small.clone()]).await;
        let texts: Vec<usize> = got.iter().map(|(k, _)| k.text.len()).collect();
        assert_eq!(
            texts,
            [small.text.len(), fill],
            "the last key is over the budget"
        );
        assert_eq!(got[0].1, small_chunks);
        assert_eq!(got[1].1.len(), fill);
        // A single call past the count is abandoned whole.
        let alone = chunk_key("c".repeat(MAX_PREFETCH_CHUNKS + 1), one_each);
        assert!(chunk_all(vec![alone]).await.is_empty());
        // A call the chunk crate refuses (over its input limit) is left out; the rest stay.
        let huge = chunk_key("d".repeat(pgml_chunk::MAX_INPUT_BYTES + 1), "{}");
        let got = chunk_all(vec![huge, small.clone()]).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, small_chunks);
    }

    fn computed(texts: &[&str]) -> Computed {
        texts
            .iter()
            .map(|t| (key(t), Ok(Arc::new(vec![0.25f32; 384]))))
            .collect()
    }

    fn size(p: &Prefetched) -> usize {
        p.embed_keys.len()
            + p.embed_values.len()
            + p.chunk_keys.len()
            + p.chunk_values.len()
            + p.transform_values.len()
    }

    #[test]
    fn every_value_has_its_bounds_in_the_flat_array() {
        let texts = ["a", "b", "c"];
        let keys: Vec<EmbedKey> = texts.iter().map(|t| key(t)).collect();
        let p = prefetched(&keys, &computed(&texts), &[], &[], MAX_RENDERED_TEXT).unwrap();
        for (n, t) in texts.iter().enumerate() {
            let bounds = format!("\"{t}\":[{},{}]", n * 384 + 1, (n + 1) * 384);
            assert!(
                p.embed_keys.contains(&bounds),
                "{bounds} in {}",
                p.embed_keys
            );
        }
        assert_eq!(p.embed_values.matches("0.25").count(), 3 * 384);
    }

    #[test]
    fn values_past_the_budget_are_left_to_the_upcall_and_the_text_stays_within_it() {
        let texts: Vec<String> = (0..100).map(|i| format!("text {i}\u{1}\u{2}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let keys: Vec<EmbedKey> = refs.iter().map(|t| key(t)).collect();
        let all = prefetched(&keys, &computed(&refs), &[], &[], MAX_RENDERED_TEXT).unwrap();
        // A statement with 10 call sites gets a tenth of the budget for each copy.
        let budget = size(&all) / 10;
        let part = prefetched(&keys, &computed(&refs), &[], &[], budget).unwrap();
        assert!(size(&part) <= budget + 64, "{} > {budget}", size(&part));
        let kept = part.embed_values.matches(',').count() + 1;
        assert!((384..100 * 384).contains(&kept), "{kept}");
        assert!(part.embed_keys.contains("text 0"));
        assert!(!part.embed_keys.contains("text 99"));
    }
}
