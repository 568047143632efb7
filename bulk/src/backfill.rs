//! The embedding backfill behind `pgml-proxy backfill`: walks a table by key (keyset pagination),
//! embeds rows whose vector column is NULL in large engine batches, and writes each batch back
//! with binary COPY into a temp table + one re-checking UPDATE, committed per batch.
//!
//! One connection reads pages; `concurrency` write connections each embed and write one batch at
//! a time, so the engine works while another batch is being written. Stopping (the token) lets
//! the batches already started finish; a rerun resumes, since only NULL rows are touched.

mod batch;
mod options;
mod progress;
mod target;

use std::sync::Arc;

use futures::SinkExt;
use pgml_engine::Embedder;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use options::{BackfillOptions, IndexKind};
pub use progress::Progress;

use batch::Batch;
use progress::ProgressState;
use target::Target;

use crate::error::BulkError;

/// Extra passes over the table for rows whose text changed while their batch was in flight.
const MAX_PASSES: usize = 3;

/// What a finished (or stopped) backfill did.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    /// Final progress (rows written, rows skipped as changed, time).
    pub progress: Progress,
    /// The embedding dimension (and of the column).
    pub dimension: usize,
    /// Stopped early by the cancellation token; rerun to continue.
    pub cancelled: bool,
    /// The `CREATE INDEX` statement run at the end, if any.
    pub index_sql: Option<String>,
}

async fn connect<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, BulkError>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "backfill connection closed with an error");
        }
    });
    Ok(client)
}

/// Runs a backfill against the database at `db`, calling `on_progress` after every committed
/// batch. Returns when every NULL row with a non-NULL text has a vector, or when `cancel` fires
/// (after the batches in progress are committed).
pub async fn backfill<E, T, F>(
    db: &tokio_postgres::Config,
    tls: T,
    engine: Arc<E>,
    options: &BackfillOptions,
    on_progress: F,
    cancel: CancellationToken,
) -> Result<BackfillReport, BulkError>
where
    E: Embedder + ?Sized + 'static,
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    F: Fn(&Progress) + Send + Sync + 'static,
{
    options.validate()?;
    let dimension = engine.dimension(&options.model, &options.kwargs).await?;
    let reader = connect(db, tls.clone()).await?;
    let target = Arc::new(Target::prepare(&reader, options, dimension).await?);
    let state = Arc::new(ProgressState::new());
    let total: i64 = reader.query_one(&target.count_sql, &[]).await?.get(0);
    state.set_total(total.max(0) as u64);
    info!(table = %options.table, rows = total, dimension, "backfill starting");

    let mut writers = Vec::with_capacity(options.concurrency);
    for _ in 0..options.concurrency {
        let client = connect(db, tls.clone()).await?;
        client.batch_execute(&target.temp_table_sql).await?;
        writers.push(client);
    }
    let on_progress: Arc<F> = Arc::new(on_progress);
    for pass in 0..MAX_PASSES {
        let changed_before = state.snapshot().changed;
        writers = run_pass(
            &reader,
            writers,
            &engine,
            &target,
            options,
            &state,
            &on_progress,
            &cancel,
        )
        .await?;
        let changed = state.snapshot().changed - changed_before;
        if cancel.is_cancelled() || changed == 0 {
            break;
        }
        info!(
            pass,
            changed, "rows changed during the pass; going over the table again"
        );
    }

    let cancelled = cancel.is_cancelled();
    let mut index_sql = None;
    if let (Some(kind), false) = (options.create_index, cancelled) {
        let filled: i64 = reader.query_one(&target.filled_sql, &[]).await?.get(0);
        let lists = options
            .lists
            .unwrap_or_else(|| options::default_lists(filled.max(0) as u64));
        let sql = target.index_sql(&options.table, kind, lists)?;
        info!(%sql, "creating index");
        reader.batch_execute(&sql).await?;
        index_sql = Some(sql);
    }
    Ok(BackfillReport {
        progress: state.snapshot(),
        dimension,
        cancelled,
        index_sql,
    })
}

/// One walk over the table from the smallest key. Returns the write connections for the next pass.
#[allow(clippy::too_many_arguments)]
async fn run_pass<E, F>(
    reader: &Client,
    writers: Vec<Client>,
    engine: &Arc<E>,
    target: &Arc<Target>,
    options: &BackfillOptions,
    state: &Arc<ProgressState>,
    on_progress: &Arc<F>,
    cancel: &CancellationToken,
) -> Result<Vec<Client>, BulkError>
where
    E: Embedder + ?Sized + 'static,
    F: Fn(&Progress) + Send + Sync + 'static,
{
    // Stops the pass on the caller's request or on the first worker error.
    let stop = cancel.child_token();
    let (tx, rx) = mpsc::channel::<Batch>(options.concurrency);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = AbortOnDrop(
        writers
            .into_iter()
            .map(|client| {
                let worker = Worker {
                    client,
                    engine: Arc::clone(engine),
                    target: Arc::clone(target),
                    model: options.model.clone(),
                    kwargs: options.kwargs.clone(),
                    state: Arc::clone(state),
                    on_progress: Arc::clone(on_progress),
                };
                tokio::spawn(worker.run(Arc::clone(&rx), stop.clone()))
            })
            .collect(),
    );

    let read_result = read_pages(reader, target, options.batch_size, &tx, &stop).await;
    if read_result.is_err() {
        stop.cancel();
    }
    drop(tx);
    let mut clients = Vec::with_capacity(workers.0.len());
    let mut first_error = read_result.err();
    for handle in workers.0.iter_mut() {
        match handle.await {
            Ok((client, Ok(()))) => clients.push(client),
            Ok((client, Err(e))) => {
                clients.push(client);
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(BulkError::Internal(format!(
                    "backfill worker panicked: {e}"
                )));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(clients),
    }
}

/// Worker tasks, aborted if the backfill future is dropped (like a killed process: their open
/// transactions roll back when the connections close).
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Reads pages of pending rows by key and hands them to the workers until none are left.
async fn read_pages(
    reader: &Client,
    target: &Target,
    batch_size: usize,
    tx: &mpsc::Sender<Batch>,
    stop: &CancellationToken,
) -> Result<(), BulkError> {
    let limit = batch_size as i64;
    let mut last_key: Option<String> = None;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let rows = match &last_key {
            None => reader.query(&target.first_page_sql, &[&limit]).await?,
            Some(key) => reader.query(&target.next_page_sql, &[&limit, key]).await?,
        };
        let Some(last) = rows.last() else {
            return Ok(());
        };
        last_key = Some(last.try_get(0)?);
        let mut batch = Batch::default();
        for row in &rows {
            batch.keys.push(row.try_get(0)?);
            batch.texts.push(row.try_get(1)?);
            batch.md5s.push(row.try_get(2)?);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            sent = tx.send(batch) => if sent.is_err() { return Ok(()) },
        }
    }
}

/// A write connection: takes a batch, embeds it, writes it, commits, reports progress.
struct Worker<E: ?Sized, F> {
    client: Client,
    engine: Arc<E>,
    target: Arc<Target>,
    model: String,
    kwargs: serde_json::Value,
    state: Arc<ProgressState>,
    on_progress: Arc<F>,
}

impl<E, F> Worker<E, F>
where
    E: Embedder + ?Sized + 'static,
    F: Fn(&Progress) + Send + Sync + 'static,
{
    async fn run(
        mut self,
        rx: Arc<Mutex<mpsc::Receiver<Batch>>>,
        stop: CancellationToken,
    ) -> (Client, Result<(), BulkError>) {
        loop {
            if stop.is_cancelled() {
                return (self.client, Ok(()));
            }
            let next = tokio::select! {
                _ = stop.cancelled() => None,
                batch = async { rx.lock().await.recv().await } => batch,
            };
            let Some(batch) = next else {
                return (self.client, Ok(()));
            };
            // A batch once taken is finished even if a stop arrives meanwhile.
            if let Err(e) = self.process(batch).await {
                stop.cancel();
                return (self.client, Err(e));
            }
        }
    }

    async fn process(&mut self, batch: Batch) -> Result<(), BulkError> {
        let rows = batch.keys.len() as u64;
        let mut vectors = Vec::with_capacity(batch.texts.len());
        for texts in batch::engine_calls(&batch.texts) {
            vectors.extend(self.engine.embed(&self.model, texts, &self.kwargs).await?);
        }
        let data = batch::copy_data(&batch, &vectors, self.target.kind, self.target.dimension)?;
        let tx = self.client.transaction().await?;
        let sink = tx.copy_in(&self.target.copy_sql).await?;
        futures::pin_mut!(sink);
        sink.send(data).await?;
        sink.as_mut().finish().await?;
        let written = tx.execute(&self.target.update_sql, &[]).await?;
        tx.commit().await?;
        let changed = rows.saturating_sub(written);
        debug!(rows, written, changed, "batch committed");
        self.state.record_batch(written, changed);
        (self.on_progress)(&self.state.snapshot());
        Ok(())
    }
}
