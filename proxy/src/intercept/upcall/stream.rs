//! pgml.transform_stream's answer, written while the server streams: after the claim, a task
//! of its own writes each piece (ord 1..) as it arrives, then an end row (chunk NULL) or the
//! error (ord 0), which the shim's `stream_next` reads one by one while its caller's cursor is
//! fetched. The session's relay is not held meanwhile: the rows reach the client as they come.
//! The writer stops (and dropping the pieces' receiver stops the HTTP request) when the
//! reader's backend is gone (a disconnect), when the reader's session ends the transaction
//! that read the stream (COMMIT or ROLLBACK after a cursor, a statement's end after a LIMIT:
//! `Streams`, told by the session's hook), when the session closed the last cursor that could
//! read a stream (the hook asks `pg_cursors` after a `CLOSE`), or when pieces have waited
//! unread for the upcall timeout; it waits while `MAX_AHEAD` pieces are unread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pgml_engine::EngineError;
use tokio::sync::mpsc::{error::TryRecvError, Receiver};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::pool::Lease;
use super::{chunks, transform, write_error, AnswerError, UpcallRequest, UpcallService};
use crate::error::ProxyError;
use crate::intercept::shim::pg_error;

/// Pieces written in one INSERT, at most (those that arrived while the last one was written).
const BATCH: usize = 256;

/// Pieces written and not yet read, at most: the writer waits for the reader beyond them.
const MAX_AHEAD: i64 = 1024;

/// How often the writer looks whether a reader behind by `MAX_AHEAD` has caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// How often, at most, the writer looks at its reader (one query) while pieces come.
const READER_CHECK: Duration = Duration::from_millis(250);

/// The running writers, by request id, with whether their reader's session has ended the
/// transaction that read the stream (the session knows: it relays that transaction's end).
#[derive(Default, Clone)]
pub(crate) struct Streams {
    running: Arc<Mutex<HashMap<String, bool>>>,
}

impl Streams {
    /// Marks those of `ids` still running as abandoned.
    pub fn abandon(&self, ids: &[String]) {
        let mut running = lock(&self.running);
        for id in ids {
            if let Some(abandoned) = running.get_mut(id) {
                *abandoned = true;
            }
        }
    }

    /// Registers the writer of `id` until the returned guard is dropped.
    fn register(&self, id: &str) -> Registered {
        lock(&self.running).insert(id.to_owned(), false);
        Registered {
            streams: self.clone(),
            id: id.to_owned(),
        }
    }

    fn abandoned(&self, id: &str) -> bool {
        lock(&self.running).get(id).copied().unwrap_or(false)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running writer's place in `Streams`.
struct Registered {
    streams: Streams,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.streams.running).remove(&self.id);
    }
}

impl UpcallService {
    /// Claims the stream, starts the request to the model server, and leaves the writing to a
    /// task of its own. Errors before the first piece (no route, the server's HTTP error) are
    /// written as the call's error.
    pub(super) async fn answer_stream(
        &self,
        database: &str,
        request: UpcallRequest,
    ) -> Result<(), AnswerError> {
        let client = self.connection(database).await?;
        let id = request.id.clone();
        self.check_and_claim(&client, database, &id).await?;
        let started = async {
            let generate = transform::generate_request("transform_stream", &request)?;
            Ok::<_, ProxyError>(self.generator.transform_stream(generate).await?)
        };
        let pieces = match tokio::time::timeout(self.timeout, started).await {
            Ok(Ok(pieces)) => pieces,
            Ok(Err(e)) => return written(write_error(&client, &id, &e).await),
            Err(_) => {
                let e = transform::timed_out(true, self.timeout);
                return written(write_error(&client, &id, &e).await);
            }
        };
        let timeout = self.timeout;
        // Put there by the shim's stream_open (a client calling it directly names only its own).
        let reader = request
            .kwargs
            .get("backend_pid")
            .and_then(serde_json::Value::as_i64)
            .and_then(|pid| i32::try_from(pid).ok());
        // A read-only reader cannot delete what it takes: only its backend's end is seen.
        let read_only = request.kwargs.get("read_only") == Some(&serde_json::Value::Bool(true));
        let registered = self.streams.register(&id);
        tokio::spawn(async move {
            let mut watch = Reader::new(reader, timeout, read_only);
            watch.registered = Some(registered);
            if let Err(e) = write_pieces(&client, &id, pieces, &mut watch).await {
                tracing::warn!(error = %pg_error(&e), "could not write a pgml.transform_stream piece");
            }
        });
        Ok(())
    }
}

fn written(result: Result<u64, tokio_postgres::Error>) -> Result<(), AnswerError> {
    result.map(|_| ()).map_err(|e| {
        AnswerError::Failed(format!(
            "pgml-proxy could not write the upcall answer: {}",
            pg_error(&e)
        ))
    })
}

/// How a stream ended.
enum End {
    Done,
    Failed(ProxyError),
}

/// Writes the stream's pieces as they arrive, then its end or error.
async fn write_pieces(
    client: &Lease,
    id: &str,
    mut pieces: Receiver<Result<String, EngineError>>,
    reader: &mut Reader,
) -> Result<(), tokio_postgres::Error> {
    let timeout = reader.timeout;
    let mut next_ord: u64 = 1;
    loop {
        let first = match tokio::time::timeout(timeout, pieces.recv()).await {
            Err(_) => {
                let e = transform::timed_out(true, timeout);
                return write_error(client, id, &e).await.map(|_| ());
            }
            Ok(None) => return write_end(client, id, next_ord).await,
            Ok(Some(Err(e))) => return write_error(client, id, &e.into()).await.map(|_| ()),
            Ok(Some(Ok(piece))) => piece,
        };
        // What else has arrived meanwhile goes in the same INSERT.
        let mut batch = vec![row(first)];
        let mut end = None;
        while batch.len() < BATCH {
            match pieces.try_recv() {
                Ok(Ok(piece)) => batch.push(row(piece)),
                Ok(Err(e)) => {
                    end = Some(End::Failed(e.into()));
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    end = Some(End::Done);
                    break;
                }
            }
        }
        chunks::insert(client, id, next_ord, &batch).await?;
        next_ord += batch.len() as u64;
        match end {
            Some(End::Done) => return write_end(client, id, next_ord).await,
            Some(End::Failed(e)) => return write_error(client, id, &e).await.map(|_| ()),
            None => {}
        }
        if let Some(why) = reader.abandoned(client, id, next_ord - 1).await? {
            // Stop the server's stream first: dropping the receiver ends the HTTP request.
            drop(pieces);
            tracing::info!(
                why,
                "pgml.transform_stream abandoned by its reader: stopped"
            );
            // The rows left are nobody's now. Those the reader took inside a transaction that
            // is still open are locked by it: skipped, not waited for (its COMMIT deletes
            // them; after a ROLLBACK the clean-up of abandoned answers does).
            client
                .execute_typed(
                    "DELETE FROM pgml_proxy.upcall_answer WHERE ctid IN (\
                       SELECT ctid FROM pgml_proxy.upcall_answer \
                        WHERE request_id OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.uuid \
                          FOR UPDATE SKIP LOCKED)",
                    &[(&id, Type::TEXT)],
                )
                .await?;
            return Ok(());
        }
    }
}

/// A piece as its answer row: `["piece"]`.
fn row(piece: String) -> String {
    serde_json::Value::Array(vec![serde_json::Value::String(piece)]).to_string()
}

/// What the writer knows of its reader: the reader's backend, and when it last took a piece.
struct Reader {
    /// Its place in `Streams`: says when the reader's session ended the transaction.
    registered: Option<Registered>,
    pid: Option<i32>,
    /// Its transaction is read-only: the pieces it took stay, so only `pid` tells.
    read_only: bool,
    timeout: Duration,
    checked: Option<Instant>,
    unread: i64,
    /// Pieces taken by the reader when it last took one, and when that was seen.
    taken: i64,
    progress: Instant,
}

impl Reader {
    fn new(pid: Option<i32>, timeout: Duration, read_only: bool) -> Reader {
        Reader {
            registered: None,
            pid,
            read_only,
            timeout,
            checked: None,
            unread: 0,
            taken: 0,
            progress: Instant::now(),
        }
    }

    /// Why the reader is taken for gone, if it is: its backend has ended, or it has taken
    /// none of the pieces waiting for it for the timeout. `written`: pieces written so far.
    /// Waits while `MAX_AHEAD` pieces are unread. Looks at most every `READER_CHECK` (one
    /// query), except while it waits.
    async fn abandoned(
        &mut self,
        client: &Client,
        id: &str,
        written: u64,
    ) -> Result<Option<&'static str>, tokio_postgres::Error> {
        let written = i64::try_from(written).unwrap_or(i64::MAX);
        loop {
            // Also while it waits for the reader to catch up: a reader that stopped reading
            // and then closed its cursor is not going to.
            if self
                .registered
                .as_ref()
                .is_some_and(|r| r.streams.abandoned(&r.id))
            {
                return Ok(Some(
                    "its session closed the cursors or ended the transaction that read it",
                ));
            }
            if self
                .checked
                .is_some_and(|at| at.elapsed() < READER_CHECK && self.unread < MAX_AHEAD)
            {
                return Ok(None);
            }
            // The reader deletes each piece it takes.
            let row = client
                .query_typed_one(
                    "SELECT (SELECT pg_catalog.count(*) FROM pgml_proxy.upcall_answer a \
                              WHERE a.request_id OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.uuid \
                                AND a.ord OPERATOR(pg_catalog.>) 0), \
                            $2::pg_catalog.int4 IS NULL OR EXISTS (SELECT FROM pg_catalog.pg_stat_activity s \
                              WHERE s.pid OPERATOR(pg_catalog.=) $2::pg_catalog.int4)",
                    &[(&id, Type::TEXT), (&self.pid, Type::INT4)],
                )
                .await?;
            let (unread, alive): (i64, bool) = (row.get(0), row.get(1));
            self.checked = Some(Instant::now());
            if !alive {
                return Ok(Some("its backend has ended"));
            }
            let taken = written.saturating_sub(unread);
            if unread == 0 || taken > self.taken {
                self.progress = Instant::now();
            }
            self.unread = unread;
            self.taken = taken;
            if self.read_only {
                return Ok(None);
            }
            if self.progress.elapsed() > self.timeout {
                return Ok(Some("no piece taken for the upcall timeout"));
            }
            if unread < MAX_AHEAD {
                return Ok(None);
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }
}

/// The end row: ord `ord`, no chunk.
async fn write_end(client: &Client, id: &str, ord: u64) -> Result<(), tokio_postgres::Error> {
    let ord = i32::try_from(ord).unwrap_or(i32::MAX);
    client
        .execute_typed(
            "INSERT INTO pgml_proxy.upcall_answer (request_id, ord) \
             VALUES ($1::pg_catalog.text::pg_catalog.uuid, $2)",
            &[(&id, Type::TEXT), (&ord, Type::INT4)],
        )
        .await
        .map(|_| ())
}
