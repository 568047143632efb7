//! backfill against a real, throwaway Postgres + pgvector and the real engine (all-MiniLM-L6-v2):
//! every row filled with the engine's vector, stop/kill then resume with each row written once,
//! concurrent text edits never overwritten with stale vectors, index built at the end.
//! Interleavings are driven by a gate in front of the engine (each embedding call waits for the
//! test's permit), never by sleeps or timing windows: every count below is exact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

#[path = "support/postgres.rs"]
mod postgres;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgml_bulk::{
    backfill, BackfillOptions, BackfillReport, BulkError, CancellationToken, IndexKind,
};
use pgml_engine::{Embedder, Engine, EngineConfig, EngineError};
use postgres::TempPostgres;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_postgres::NoTls;

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const ROWS: i64 = 5000;
const TEXT: &str = "title || ': ' || body";
const BATCH: i64 = 400;
/// An upper bound on any wait below (a hang fails the test instead of blocking it).
const HANG: Duration = Duration::from_secs(300);

/// A table of ROWS distinct short reviews, and a trigger that logs every committed vector write.
async fn seed(pg: &TempPostgres, db: &str) -> tokio_postgres::Client {
    let client = pg.create_db(db).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE EXTENSION vector;
             CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text);
             INSERT INTO docs SELECT i, 'Review ' || i,
                (ARRAY['great movie', 'the disc skipped', 'lovely soundtrack', 'too long', 'my kids loved it'])[i % 5 + 1]
                || ' number ' || (i * 7919 % 10007)
             FROM generate_series(1, {ROWS}) i;
             CREATE TABLE writes (id bigint);
             CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN
                    IF to_jsonb(NEW) -> 'emb' IS DISTINCT FROM to_jsonb(OLD) -> 'emb' THEN
                      INSERT INTO writes VALUES (NEW.id);
                    END IF;
                    RETURN NEW;
                  END $$;
             CREATE TRIGGER log_write AFTER UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION log_write();"
        ))
        .await
        .unwrap();
    client
}

fn engine(cache_bytes: u64) -> Arc<Engine> {
    Arc::new(
        Engine::new(EngineConfig {
            cache_bytes,
            ..EngineConfig::default()
        })
        .expect("engine (ORT_DYLIB_PATH, HF_HOME)"),
    )
}

fn options() -> BackfillOptions {
    BackfillOptions {
        batch_size: BATCH as usize,
        concurrency: 2,
        ..BackfillOptions::new("docs", "emb", TEXT, MODEL)
    }
}

/// Asserts every row has a vector equal (1e-4) to a cache-less engine's vector for its current text.
async fn assert_all_rows_match_engine(client: &tokio_postgres::Client) {
    let rows = client
        .query(
            &format!("SELECT id, {TEXT}, emb::real[] FROM docs ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, ROWS);
    let texts: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let reference = engine(0);
    let mut expected = Vec::new();
    for chunk in texts.chunks(256) {
        expected.extend(
            reference
                .embed(MODEL, chunk.to_vec(), &json!({}))
                .await
                .unwrap(),
        );
    }
    for (row, want) in rows.iter().zip(&expected) {
        let id: i64 = row.get(0);
        let got: Option<Vec<f32>> = row.get(2);
        let got = got.unwrap_or_else(|| panic!("row {id} has no vector"));
        assert_eq!(got.len(), 384);
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "row {id}: max difference {diff}");
    }
}

async fn writes_per_row(client: &tokio_postgres::Client) -> (i64, i64) {
    let row = client
        .query_one("SELECT count(*), count(DISTINCT id) FROM writes", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn backfill_fills_every_row_with_the_engines_vector_and_builds_the_index() {
    let pg = TempPostgres::start().unwrap();
    let client = seed(&pg, "fill").await;
    let db: tokio_postgres::Config = pg.url("fill").parse().unwrap();
    let progress_calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let calls = Arc::clone(&progress_calls);
    let opts = BackfillOptions {
        create_index: Some(IndexKind::IvfFlat),
        ..options()
    };

    let report = backfill(
        &db,
        NoTls,
        engine(0),
        &opts,
        move |p| {
            assert!(p.done <= p.total);
            calls.fetch_add(1, Ordering::Relaxed);
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();

    assert_eq!(
        (
            report.progress.done,
            report.progress.total,
            report.dimension
        ),
        (ROWS as u64, ROWS as u64, 384)
    );
    assert!(!report.cancelled);
    assert_eq!(
        progress_calls.load(Ordering::Relaxed),
        report.progress.batches
    );
    assert_eq!(report.progress.batches, 13);
    let column_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'emb'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(column_type, "vector(384)");
    assert_eq!(writes_per_row(&client).await, (ROWS, ROWS));
    assert_all_rows_match_engine(&client).await;
    let index: String = client
        .query_one("SELECT indexdef FROM pg_indexes WHERE tablename = 'docs' AND indexname = 'docs_emb_ivfflat_idx'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        index.contains("ivfflat") && index.contains("lists='5'"),
        "{index}"
    );

    // A second run finds nothing to do.
    let again = backfill(
        &db,
        NoTls,
        engine(0),
        &options(),
        |_| {},
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((again.progress.done, again.progress.total), (0, 0));
    assert_eq!(writes_per_row(&client).await, (ROWS, ROWS));
}

/// The real engine behind a gate: each embedding call (one per batch: a batch of short texts is
/// one engine call) counts as arrived, then waits for a permit from the test.
struct Gate {
    engine: Arc<Engine>,
    permits: Semaphore,
    arrived: watch::Sender<usize>,
}

impl Gate {
    fn new(engine: Arc<Engine>, permits: usize) -> Arc<Self> {
        Arc::new(Gate {
            engine,
            permits: Semaphore::new(permits),
            arrived: watch::Sender::new(0),
        })
    }

    /// Waits until `calls` embedding calls have reached the gate (passed or waiting).
    async fn wait_arrived(&self, calls: usize) {
        let mut arrived = self.arrived.subscribe();
        tokio::time::timeout(HANG, arrived.wait_for(|&n| n >= calls))
            .await
            .unwrap_or_else(|_| panic!("{calls} embedding calls never arrived"))
            .unwrap();
    }

    /// Lets every call through from now on.
    fn open(&self) {
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// A backfill run of `db` through this gate, on its own task.
    fn run(
        self: &Arc<Self>,
        db: &tokio_postgres::Config,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<Result<BackfillReport, BulkError>> {
        let (db, gate) = (db.clone(), Arc::clone(self));
        tokio::spawn(async move { backfill(&db, NoTls, gate, &options(), |_| {}, cancel).await })
    }
}

#[async_trait::async_trait]
impl Embedder for Gate {
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kwargs: &Value,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.arrived.send_modify(|n| *n += 1);
        self.permits.acquire().await.unwrap().forget();
        self.engine.embed(model, texts, kwargs).await
    }

    async fn dimension(&self, model: &str, kwargs: &Value) -> Result<usize, EngineError> {
        self.engine.dimension(model, kwargs).await
    }
}

async fn filled(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(emb) FROM docs", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn stopped_and_killed_runs_resume_without_skipping_or_rewriting_rows() {
    let pg = TempPostgres::start().unwrap();
    let client = seed(&pg, "resume").await;
    let db: tokio_postgres::Config = pg.url("resume").parse().unwrap();
    let engine = engine(64 << 20);

    // Graceful stop (Ctrl-C) with three batches committed and two more taken: two workers, so
    // the fifth call arrives only once both have committed all they passed and hold a new batch
    // each, waiting in the engine. The batches taken still commit after the stop; no others do.
    let gate = Gate::new(Arc::clone(&engine), 3);
    let cancel = CancellationToken::new();
    let run = gate.run(&db, cancel.clone());
    gate.wait_arrived(5).await;
    assert_eq!(filled(&client).await, 3 * BATCH);
    cancel.cancel();
    gate.open();
    let stopped = tokio::time::timeout(HANG, run)
        .await
        .expect("the stopped run returns")
        .unwrap()
        .unwrap();
    assert!(stopped.cancelled);
    assert_eq!(
        (stopped.progress.done, stopped.progress.batches),
        (5 * BATCH as u64, 5),
        "{:?}",
        stopped.progress
    );
    assert_eq!(filled(&client).await, 5 * BATCH);

    // A killed run: four batches committed, both workers waiting in the engine with a batch each
    // (no transaction open yet) when the task is aborted; nothing it held is written.
    let gate = Gate::new(Arc::clone(&engine), 4);
    let task = gate.run(&db, CancellationToken::new());
    gate.wait_arrived(6).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let after_kill = filled(&client).await;
    assert_eq!(after_kill, 9 * BATCH);

    let rest = backfill(
        &db,
        NoTls,
        Arc::clone(&engine),
        &options(),
        |_| {},
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(rest.progress.total, (ROWS - after_kill) as u64);
    assert_eq!(rest.progress.done, rest.progress.total);
    assert_eq!(writes_per_row(&client).await, (ROWS, ROWS));
    assert_all_rows_match_engine(&client).await;
}

#[tokio::test]
async fn concurrent_text_updates_are_never_overwritten_with_stale_vectors() {
    let pg = TempPostgres::start().unwrap();
    let client = seed(&pg, "concurrent").await;
    let db: tokio_postgres::Config = pg.url("concurrent").parse().unwrap();
    let app = pg.connect("concurrent").await.unwrap();
    let gate = Gate::new(engine(64 << 20), 0);
    let run = gate.run(&db, CancellationToken::new());
    // Both workers hold a batch (ids 1..=800, read with their texts' md5) and wait in the engine;
    // the reader can be at most three batches ahead of them (ids up to 2,000). An application
    // edits every tenth text in the batches held, and in the last batches, not read yet.
    gate.wait_arrived(2).await;
    let edited = app
        .execute(
            &format!(
                "UPDATE docs SET body = body || ' (edited)' \
                 WHERE id % 10 = 0 AND (id <= {held} OR id > {unread})",
                held = 2 * BATCH,
                unread = ROWS - 2 * BATCH
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(edited, 160);
    gate.open();
    let report = tokio::time::timeout(HANG, run)
        .await
        .expect("the run returns")
        .unwrap()
        .unwrap();

    // The 80 edited rows of the held batches were skipped (their vectors would be stale), then
    // embedded from their new text by a second pass; the unread ones were read edited.
    assert_eq!(report.progress.changed, 80, "{:?}", report.progress);
    assert_eq!(report.progress.done, ROWS as u64);
    let edited: i64 = client
        .query_one("SELECT count(*) FROM docs WHERE body LIKE '%(edited)'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(edited, 160);
    assert_eq!(writes_per_row(&client).await, (ROWS, ROWS));
    assert_all_rows_match_engine(&client).await;
}
