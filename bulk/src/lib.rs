//! pgml-bulk: bulk work for pgml-proxy. `dataset` reads datasets (parquet, CSV, JSON lines, the
//! Hugging Face cache) into binary COPY data for `pgml.load_dataset`; `backfill` fills a vector
//! column of an existing table from an embedding engine, batch by batch, resumably.

pub mod backfill;
pub mod dataset;
mod error;

pub use backfill::{backfill, BackfillOptions, BackfillReport, IndexKind, Progress};
pub use dataset::{load_dataset, DatasetConfig, DatasetReader, PgType, Schema, TableName};
pub use error::BulkError;
pub use tokio_util::sync::CancellationToken;
