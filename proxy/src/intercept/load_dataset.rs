//! `SELECT * FROM pgml.load_dataset(...)` executed by the proxy on the client's own session:
//! the dataset is read in bounded chunks and streamed in with binary COPY, table and rows in
//! one transaction (a savepoint inside the client's transaction), then answered as one row.

use std::path::PathBuf;

use std::sync::Arc;

use pgml_bulk::{DatasetConfig, DatasetReader};
use pgml_rewriter::LoadDatasetCall;

use super::InterceptHook;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;
use crate::net::messages::error_response::Fields;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::row_description::Column;
use crate::net::messages::{command_complete, data_row, row_description};
use crate::session::io::SessionIo;

/// Where load_dataset looks for datasets besides the hub cache.
#[derive(Clone, Debug, Default)]
pub struct DatasetSettings {
    /// Directory of bundled datasets (the repo's `datasets/`).
    pub datasets_dir: Option<PathBuf>,
    /// Other directories local files may be loaded from (nothing else on the host can be).
    pub dataset_dirs: Vec<PathBuf>,
    /// Whether datasets missing from the hub cache may be downloaded.
    pub allow_downloads: bool,
    /// The hub cache; None = HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
    pub hub_cache: Option<PathBuf>,
}

impl DatasetSettings {
    /// The bulk crate's configuration for these settings.
    pub fn config(&self) -> DatasetConfig {
        let mut config = DatasetConfig::from_env().with_downloads(self.allow_downloads);
        if let Some(dir) = &self.hub_cache {
            config.hub_cache = dir.clone();
        }
        if let Some(dir) = &self.datasets_dir {
            config = config.with_datasets_dir(dir.clone());
        }
        for dir in &self.dataset_dirs {
            config = config.with_dataset_dir(dir.clone());
        }
        config
    }
}

/// How a load ended, for the client.
pub enum Outcome {
    /// Loaded: (table name, rows).
    Loaded(String, u64),
    /// Failed before or while loading (nothing was left behind).
    Failed(ProxyError),
}

fn upstream_failure(frame: &Frame) -> ProxyError {
    ProxyError::Upstream(Fields::decode(frame).to_upstream_error())
}

impl InterceptHook {
    /// Runs the load on the session (the upstream must be idle). The transaction status the
    /// client sees afterwards is the session state's.
    async fn run_load(
        &mut self,
        io: &mut SessionIo,
        call: &LoadDatasetCall,
        settings: &DatasetSettings,
    ) -> Result<Outcome> {
        let kwargs: serde_json::Value = match serde_json::from_str(&call.kwargs) {
            Ok(v) => v,
            Err(source) => {
                return Ok(Outcome::Failed(ProxyError::InvalidJson {
                    function: "pgml.load_dataset",
                    source,
                }))
            }
        };
        let config = settings.config();
        let (source, subset, limit) = (call.source.clone(), call.subset.clone(), call.limit);
        let opened = tokio::task::spawn_blocking(move || {
            DatasetReader::open(&source, subset.as_deref(), limit, &kwargs, &config).map(|r| {
                let table = r.table(&config);
                (r, table)
            })
        })
        .await
        .map_err(|e| ProxyError::Internal(format!("load_dataset task: {e}")))?;
        let (mut reader, table) = match opened {
            Ok(v) => v,
            Err(e) => return Ok(Outcome::Failed(e.into())),
        };
        let in_transaction = io.state().transaction_status() == TransactionStatus::InTransaction;
        let (begin, commit, abort) = if in_transaction {
            (
                "SAVEPOINT pgml_proxy_load",
                "RELEASE SAVEPOINT pgml_proxy_load",
                "ROLLBACK TO SAVEPOINT pgml_proxy_load; RELEASE SAVEPOINT pgml_proxy_load",
            )
        } else {
            ("BEGIN", "COMMIT", "ROLLBACK")
        };
        // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists:
        // only ask for it when the schema is missing, so ordinary users get the clearer error.
        let exists = self
            .private(io, "SELECT to_regnamespace('pgml') IS NOT NULL")
            .await?;
        let has_schema = exists
            .rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v.as_ref() == b"t");
        let create_schema = if has_schema {
            ""
        } else {
            "CREATE SCHEMA IF NOT EXISTS pgml; "
        };
        let setup = format!(
            "{begin}; {create_schema}{}; {}",
            reader.drop_table_sql(&table),
            reader.create_table_sql(&table)
        );
        let result = self.private(io, &setup).await?;
        if let Some(error) = result.error {
            self.private(io, abort).await?;
            return Ok(Outcome::Failed(upstream_failure(&error)));
        }
        match self.copy(io, &reader.copy_sql(&table), &mut reader).await? {
            Ok(()) => {}
            Err(f) => {
                self.private(io, abort).await?;
                return Ok(Outcome::Failed(f));
            }
        }
        let result = self.private(io, commit).await?;
        if let Some(error) = result.error {
            return Ok(Outcome::Failed(upstream_failure(&error)));
        }
        Ok(Outcome::Loaded(
            reader.table_name().to_owned(),
            reader.rows_written(),
        ))
    }

    /// Streams the dataset with COPY FROM STDIN (binary), one chunk in memory at a time.
    async fn copy(
        &mut self,
        io: &mut SessionIo,
        sql: &str,
        reader: &mut DatasetReader,
    ) -> Result<std::result::Result<(), ProxyError>> {
        let mut header = Some(reader.copy_header());
        let next_chunk = || match header.take() {
            Some(h) => Ok(Some(h)),
            // Reading is file I/O: on a multi-threaded runtime the other tasks move to another
            // worker meanwhile; a relay thread (single-threaded runtime) reads in place.
            None => {
                let multi = tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread;
                if multi {
                    tokio::task::block_in_place(|| reader.next_copy_chunk())
                } else {
                    reader.next_copy_chunk()
                }
                .map_err(ProxyError::from)
            }
        };
        let (result, local_error) = self.copy_in(io, sql, next_chunk).await?;
        Ok(match (local_error, result.error) {
            (Some(e), _) => Err(e),
            (None, Some(frame)) => Err(upstream_failure(&frame)),
            (None, None) => Ok(()),
        })
    }
}

/// The client's answer: a one-row result in the shape PostgresML returns.
pub fn result_frames(call: &LoadDatasetCall, table: &str, rows: u64) -> Vec<Frame> {
    let (description, row) = if call.star {
        let n = rows.to_string();
        (
            row_description::encode(&[
                Column {
                    name: "table_name",
                    type_oid: 25,
                    type_len: -1,
                },
                Column {
                    name: "rows",
                    type_oid: 20,
                    type_len: 8,
                },
            ]),
            data_row::encode(&[Some(table.as_bytes()), Some(n.as_bytes())]),
        )
    } else {
        let quoted = if table
            .chars()
            .any(|c| matches!(c, ',' | '(' | ')' | '"' | '\\' | ' '))
        {
            format!("\"{}\"", table.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            table.to_owned()
        };
        let composite = format!("({quoted},{rows})");
        (
            row_description::encode(&[Column {
                name: "load_dataset",
                type_oid: 2249,
                type_len: -1,
            }]),
            data_row::encode(&[Some(composite.as_bytes())]),
        )
    };
    vec![description, row, command_complete::encode("SELECT 1")]
}

impl InterceptHook {
    /// Executes `SELECT * FROM pgml.load_dataset(...)` on the session and answers it.
    pub(super) async fn load_dataset(
        &mut self,
        io: &mut SessionIo,
        frame: &Frame,
        call: &LoadDatasetCall,
    ) -> Result<()> {
        self.drain(io).await?;
        if io.state().transaction_status() == TransactionStatus::Failed {
            io.send_upstream(frame);
            return Ok(());
        }
        let datasets = self.shared.config.datasets.clone();
        match self.run_load(io, call, &datasets).await? {
            Outcome::Loaded(table, rows) => {
                tracing::info!(%table, rows, "pgml.load_dataset loaded");
                for f in result_frames(call, &table, rows) {
                    io.send_client(&f);
                }
                let ready = io.state().transaction_status().encode();
                io.send_client(&ready);
                Ok(())
            }
            Outcome::Failed(failure) => self.fail_statement(io, Arc::new(failure)).await,
        }
    }
}
