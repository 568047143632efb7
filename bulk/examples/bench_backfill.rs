//! Benchmark for `make bench-backfill`: loads the bundled reviews_sample into the database at
//! `$1`, then measures rows/s of the engine alone on the review texts and of a backfill of the
//! same texts (same engine instance, warm, cache disabled), and prints both and their ratio.
//! Usage: bench_backfill <postgres-url> [rows] [batch-size] [concurrency]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use pgml_bulk::{backfill, load_dataset, BackfillOptions, CancellationToken, DatasetConfig};
use pgml_engine::{Embedder, Engine, EngineConfig};
use serde_json::json;
use tokio_postgres::NoTls;

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .context("usage: bench_backfill <postgres-url> [rows] [batch] [concurrency]")?;
    let rows: i64 = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let concurrency: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(2);

    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    let datasets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets");
    let config = DatasetConfig::from_env().with_datasets_dir(datasets);
    let started = Instant::now();
    let (_, loaded) = load_dataset(
        &client,
        "reviews_sample",
        None,
        Some(rows),
        &json!({}),
        &config,
    )
    .await?;
    println!(
        "load_dataset: {loaded} rows in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS vector;
             ALTER TABLE pgml.reviews_sample ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        )
        .await?;
    let texts: Vec<String> = client
        .query(
            "SELECT review_body FROM pgml.reviews_sample ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();

    let engine = Arc::new(Engine::new(EngineConfig {
        cache_bytes: 0,
        ..EngineConfig::default()
    })?);
    engine
        .embed(MODEL, texts[..16.min(texts.len())].to_vec(), &json!({}))
        .await?;

    let started = Instant::now();
    for chunk in texts.chunks(batch) {
        engine.embed(MODEL, chunk.to_vec(), &json!({})).await?;
    }
    let engine_secs = started.elapsed().as_secs_f64();
    let engine_rate = texts.len() as f64 / engine_secs;
    println!(
        "engine alone: {} texts in {engine_secs:.2}s = {engine_rate:.1} rows/s",
        texts.len()
    );

    let options = BackfillOptions {
        batch_size: batch,
        concurrency,
        ..BackfillOptions::new("pgml.reviews_sample", "embedding", "review_body", MODEL)
    };
    let db: tokio_postgres::Config = url.parse()?;
    let report = backfill(
        &db,
        NoTls,
        Arc::clone(&engine),
        &options,
        |_| {},
        CancellationToken::new(),
    )
    .await?;
    let backfill_rate = report.progress.rows_per_second();
    println!(
        "backfill: {} rows in {:.2}s = {backfill_rate:.1} rows/s (batch {batch}, concurrency {concurrency})",
        report.progress.done,
        report.progress.elapsed.as_secs_f64()
    );
    println!(
        "ratio backfill/engine: {:.3} (target >= 0.90)",
        backfill_rate / engine_rate
    );
    Ok(())
}
