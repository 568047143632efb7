//! pgml.transform_stream's answer, written while the server streams: after the claim, a task
//! of its own writes each piece (ord 1..) as it arrives, then an end row (chunk NULL) or the
//! error (ord 0), which the shim's `stream_next` reads one by one while its caller's cursor is
//! fetched. The session's relay is not held meanwhile: the rows reach the client as they come.
//! A caller that stops reading (a closed cursor, a LIMIT, a gone session) is given up on once
//! `MAX_AHEAD` pieces wait unread for the upcall timeout; dropping the pieces' receiver then
//! stops the HTTP request.

use std::time::Duration;

use pgml_engine::EngineError;
use tokio::sync::mpsc::{error::TryRecvError, Receiver};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::pool::Lease;
use super::{chunks, transform, AnswerError, UpcallRequest, UpcallService};
use crate::error::ProxyError;
use crate::intercept::shim::pg_error;

/// Pieces written in one INSERT, at most (those that arrived while the last one was written).
const BATCH: usize = 256;

/// Pieces written and not yet read, at most: the writer waits for the reader beyond them.
const MAX_AHEAD: i64 = 1024;

/// How often the writer looks whether a reader behind by `MAX_AHEAD` has caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

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
        tokio::spawn(async move {
            if let Err(e) = write_pieces(&client, &id, pieces, timeout).await {
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
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
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
        if !caught_up(client, id, next_ord, timeout).await? {
            // Nobody reads: stop the server's stream (the receiver goes with this task) and
            // leave the rows to the clean-up of abandoned answers.
            tracing::info!("pgml.transform_stream abandoned by its reader: stopped");
            return Ok(());
        }
    }
}

/// A piece as its answer row: `["piece"]`.
fn row(piece: String) -> String {
    serde_json::Value::Array(vec![serde_json::Value::String(piece)]).to_string()
}

/// Whether the reader is (or gets, within `timeout`) fewer than `MAX_AHEAD` pieces behind the
/// writer, whose next piece is `next_ord`.
async fn caught_up(
    client: &Client,
    id: &str,
    next_ord: u64,
    timeout: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let next = i64::try_from(next_ord).unwrap_or(i64::MAX);
    if next <= MAX_AHEAD {
        return Ok(true);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // The reader deletes each piece it takes: the lowest left is the next it will read.
        let unread: i64 = client
            .query_typed_one(
                "SELECT pg_catalog.count(*) FROM pgml_proxy.upcall_answer a \
                  WHERE a.request_id OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.uuid \
                    AND a.ord OPERATOR(pg_catalog.>) 0",
                &[(&id, Type::TEXT)],
            )
            .await?
            .get(0);
        if unread < MAX_AHEAD {
            return Ok(true);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
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

/// The error row (ord 0) that fails the reader with `error`.
async fn write_error(
    client: &Client,
    id: &str,
    error: &ProxyError,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute_typed(
            "INSERT INTO pgml_proxy.upcall_answer (request_id, ord, error_sqlstate, error_message) \
             VALUES ($1::pg_catalog.text::pg_catalog.uuid, 0, $2, $3)",
            &[
                (&id, Type::TEXT),
                (&error.sqlstate(), Type::TEXT),
                (&error.to_string(), Type::TEXT),
            ],
        )
        .await
}
