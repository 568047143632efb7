//! pgml.chunk answers, streamed: the chunks are made on a blocking thread and written in
//! bounded batches while they are made, so the proxy holds a few batches, never the answer (a
//! million chunks took ~50 MB as strings and as much again as one INSERT's array). The limits
//! on one call are the chunk crate's; the checks before any write are `answer`'s.
//!
//! The shim takes an answer once any row with ord >= 0 of its request is committed, so the
//! batches of a larger answer are written under a staging id and published in one UPDATE (not
//! in a transaction: the service connection is shared, and is no session of its own behind a
//! transaction pooler). Publishing costs about 2 s per million rows, against the ~100 MB the
//! proxy would hold to write them in one statement.

use std::ops::ControlFlow;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::UpcallService;
use crate::error::ProxyError;

/// Chunks in one batch, at most.
const BATCH_CHUNKS: usize = 8192;

/// Bytes of chunk text in one batch, at most (a longer chunk is a batch of its own).
const BATCH_BYTES: usize = 1024 * 1024;

/// Batches made ahead of the writer: the chunking waits for the writer beyond them.
const BATCHES_AHEAD: usize = 2;

/// The chunks of one call, made on a blocking thread as the writer takes them.
pub(in crate::intercept) struct ChunkStream {
    batches: mpsc::Receiver<Vec<String>>,
    made: JoinHandle<Result<(), pgml_chunk::ChunkError>>,
}

impl ChunkStream {
    /// Starts chunking `text`; dropping the stream stops it (at the next batch).
    pub(super) fn start(splitter: String, text: String, kwargs: serde_json::Value) -> Self {
        let (sender, batches) = mpsc::channel(BATCHES_AHEAD);
        let made = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let mut bytes = 0;
            pgml_chunk::chunk_each(&splitter, &text, &kwargs, |chunk| {
                bytes += chunk.len();
                batch.push(chunk.to_owned());
                if batch.len() < BATCH_CHUNKS && bytes < BATCH_BYTES {
                    return ControlFlow::Continue(());
                }
                bytes = 0;
                match sender.blocking_send(std::mem::take(&mut batch)) {
                    Ok(()) => ControlFlow::Continue(()),
                    // The writer is gone (the upcall failed or timed out): stop.
                    Err(_) => ControlFlow::Break(()),
                }
            })?;
            if !batch.is_empty() {
                let _ = sender.blocking_send(batch);
            }
            Ok(())
        });
        ChunkStream { batches, made }
    }

    /// The next batch, or None when there are no more: then the chunking has ended, and
    /// [`ChunkStream::end`] says whether the batches are the whole answer.
    async fn next(&mut self, deadline: Instant) -> Result<Option<Vec<String>>, Timeout> {
        tokio::time::timeout_at(deadline, self.batches.recv())
            .await
            .map_err(|_| Timeout)
    }

    /// How the chunking ended: the error that fails the call, if any.
    async fn end(self) -> Result<(), ProxyError> {
        self.made
            .await
            .map_err(|e| ProxyError::Internal(format!("pgml.chunk task failed: {e}")))?
            .map_err(ProxyError::from)
    }
}

/// The deadline passed before the chunks were all made.
struct Timeout;

impl UpcallService {
    /// Writes the chunks of request `id` as they are made, or the error that fails the call
    /// (the chunk limits, or the timeout at `deadline`). An answer of one batch is one INSERT;
    /// a larger one is staged batch by batch and published by one UPDATE.
    pub(super) async fn write_chunks(
        &self,
        client: &Client,
        id: &str,
        mut chunks: ChunkStream,
        deadline: Instant,
    ) -> Result<u64, tokio_postgres::Error> {
        let first = match chunks.next(deadline).await {
            Err(Timeout) => return self.write_timeout(client, id).await,
            Ok(None) => Vec::new(),
            Ok(Some(batch)) => batch,
        };
        let second = match chunks.next(deadline).await {
            Err(Timeout) => return self.write_timeout(client, id).await,
            Ok(second) => second,
        };
        let Some(second) = second else {
            // The whole answer is one batch (or none: no chunks, no rows).
            return match chunks.end().await {
                Ok(()) if first.is_empty() => self.write_empty(client, id).await,
                Ok(()) => insert(client, id, 1, &first).await,
                Err(e) => self.write_error(client, id, &e).await,
            };
        };
        let staging = staging_id(id);
        let staging_ref = staging.as_str();
        // Ok(Ok(stream)): every batch staged; Ok(Err(Timeout)): the deadline passed first.
        let staged = async move {
            let mut written = insert(client, staging_ref, 1, &first).await?;
            written += insert(client, staging_ref, written + 1, &second).await?;
            drop((first, second));
            loop {
                match chunks.next(deadline).await {
                    Ok(Some(batch)) => {
                        written += insert(client, staging_ref, written + 1, &batch).await?;
                    }
                    Ok(None) => return Ok::<_, tokio_postgres::Error>(Ok(chunks)),
                    Err(Timeout) => return Ok(Err(Timeout)),
                }
            }
        };
        let outcome = match staged.await {
            Ok(Ok(chunks)) => chunks.end().await,
            Ok(Err(Timeout)) => Err(ProxyError::Timeout(self.timeout)),
            Err(e) => {
                discard(client, &staging).await;
                return Err(e);
            }
        };
        match outcome {
            Ok(()) => {
                client
                    .execute_typed(
                        "UPDATE pgml_proxy.upcall_answer SET request_id = $1::pg_catalog.text::pg_catalog.uuid \
                          WHERE request_id OPERATOR(pg_catalog.=) $2::pg_catalog.text::pg_catalog.uuid",
                        &[(&id, Type::TEXT), (&staging.as_str(), Type::TEXT)],
                    )
                    .await
            }
            Err(e) => {
                discard(client, &staging).await;
                self.write_error(client, id, &e).await
            }
        }
    }

    async fn write_timeout(&self, client: &Client, id: &str) -> Result<u64, tokio_postgres::Error> {
        self.write_error(client, id, &ProxyError::Timeout(self.timeout))
            .await
    }
}

/// Writes `chunks` as the rows `first_ord..` of request `id` (also pgml.transform's JSON
/// texts).
pub(super) async fn insert(
    client: &Client,
    id: &str,
    first_ord: u64,
    chunks: &[String],
) -> Result<u64, tokio_postgres::Error> {
    if chunks.is_empty() {
        return Ok(0);
    }
    // Ords are below the chunk crate's MAX_CHUNKS (2^20): far inside int4.
    let offset = i64::try_from(first_ord).unwrap_or(i64::MAX) - 1;
    client
        .execute_typed(
            "INSERT INTO pgml_proxy.upcall_answer (request_id, ord, chunk) \
             SELECT $1::pg_catalog.text::pg_catalog.uuid, (t.n OPERATOR(pg_catalog.+) $2)::pg_catalog.int4, t.c \
               FROM pg_catalog.unnest($3::pg_catalog.text[]) WITH ORDINALITY AS t(c, n)",
            &[
                (&id, Type::TEXT),
                (&offset, Type::INT8),
                (&chunks, Type::TEXT_ARRAY),
            ],
        )
        .await
}

/// Removes the staged rows of an answer that will not be published (best effort: the
/// clean-up of abandoned answers removes what is left).
async fn discard(client: &Client, staging: &str) {
    let removed = client
        .execute_typed(
            "DELETE FROM pgml_proxy.upcall_answer \
              WHERE request_id OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.uuid",
            &[(&staging, Type::TEXT)],
        )
        .await;
    if let Err(e) = removed {
        tracing::warn!(error = %e, "could not remove a staged pgml.chunk answer");
    }
}

/// Where the batches of request `id` wait until published: its uuid with every hex digit
/// complemented. The shim's polls for `id` do not read them, and no request has this id: the
/// shim's ids are version 4, whose version digit (4) complemented is b.
fn staging_id(id: &str) -> String {
    id.chars()
        .map(|c| match c.to_digit(16) {
            Some(d) => char::from_digit(15 - d, 16).unwrap_or(c),
            None => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_id_is_another_uuid_that_no_request_has() {
        let id = "0f1e2d3c-4b5a-4697-8877-a6b5c4d3e2f1";
        let staging = staging_id(id);
        assert_eq!(staging, "f0e1d2c3-b4a5-b968-7788-594a3b2c1d0e");
        assert_eq!(staging_id(&staging), id);
        // The version digit: 4 for the shim's ids, never for a staging id.
        assert_eq!(id.as_bytes()[14], b'4');
        assert_eq!(staging.as_bytes()[14], b'b');
    }
}
