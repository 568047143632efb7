//! `load_dataset` over a tokio-postgres client (the CLI path): the table is replaced and filled in
//! one transaction, with file reading on a blocking thread feeding COPY through a bounded channel.

use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tracing::info;

use super::{DatasetConfig, DatasetReader};
use crate::error::BulkError;

/// Loads `source` into `<config.schema>."<name>"` in one transaction (a previous table of that
/// name is dropped inside it, as PostgresML replaces it). Returns (table name, rows loaded); the
/// table name is unqualified, like PostgresML's `table_name` column.
pub async fn load_dataset(
    client: &tokio_postgres::Client,
    source: &str,
    subset: Option<&str>,
    limit: Option<i64>,
    kwargs: &serde_json::Value,
    config: &DatasetConfig,
) -> Result<(String, u64), BulkError> {
    let (source_owned, subset_owned, kwargs_owned, config_owned) = (
        source.to_string(),
        subset.map(str::to_string),
        kwargs.clone(),
        config.clone(),
    );
    let reader = tokio::task::spawn_blocking(move || {
        DatasetReader::open(
            &source_owned,
            subset_owned.as_deref(),
            limit,
            &kwargs_owned,
            &config_owned,
        )
    })
    .await
    .map_err(|e| BulkError::InvalidArgument(format!("dataset reader thread failed: {e}")))??;

    let table = reader.table(config);
    let name = reader.table_name().to_string();
    client.batch_execute("BEGIN").await?;
    let result = fill(client, reader, &table).await;
    match result {
        Ok(rows) => {
            client.batch_execute("COMMIT").await?;
            info!(table = %table, rows, "dataset loaded");
            Ok((name, rows))
        }
        Err(e) => {
            // The original error matters more than a failed rollback on a broken connection.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn fill(
    client: &tokio_postgres::Client,
    reader: DatasetReader,
    table: &super::TableName,
) -> Result<u64, BulkError> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; {}; {}",
            super::quote_ident(&table.schema),
            reader.drop_table_sql(table),
            reader.create_table_sql(table)
        ))
        .await?;
    let copy_sql = reader.copy_sql(table);
    let sink = client.copy_in::<_, Bytes>(&copy_sql).await?;
    futures::pin_mut!(sink);

    let (tx, mut rx) = mpsc::channel::<Result<Bytes, BulkError>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        if tx.blocking_send(Ok(reader.copy_header())).is_err() {
            return;
        }
        loop {
            let chunk = reader.next_copy_chunk().transpose();
            let Some(chunk) = chunk else { return };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    while let Some(chunk) = rx.recv().await {
        sink.send(chunk?).await?;
    }
    producer
        .await
        .map_err(|e| BulkError::InvalidArgument(format!("dataset reader thread failed: {e}")))?;
    Ok(sink.as_mut().finish().await?)
}
