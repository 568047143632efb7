//! `SELECT * FROM pgml.load_dataset(...)` executed by the proxy on the client's own session:
//! the dataset is read in bounded chunks and streamed in with binary COPY, table and rows in
//! one transaction (a savepoint inside the client's transaction), then answered as one row.

use std::path::PathBuf;

use bytes::{BufMut, BytesMut};
use pgml_bulk::{DatasetConfig, DatasetReader};
use pgml_rewriter::LoadDatasetCall;

use crate::embedding::EmbedFailure;
use crate::error::{ProxyError, Result};
use crate::frame::Frame;
use crate::messages::error_response::Fields;
use crate::messages::query::Query;
use crate::messages::ready_for_query::TransactionStatus;
use crate::relay::SessionIo;

/// Where load_dataset looks for datasets besides the hub cache.
#[derive(Clone, Debug, Default)]
pub struct DatasetSettings {
    /// Directory of bundled datasets (the repo's `datasets/`).
    pub datasets_dir: Option<PathBuf>,
}

impl DatasetSettings {
    fn config(&self) -> DatasetConfig {
        let config = DatasetConfig::from_env();
        match &self.datasets_dir {
            Some(dir) => config.with_datasets_dir(dir.clone()),
            None => config,
        }
    }
}

/// How a load ended, for the client.
pub enum Outcome {
    /// Loaded: (table name, rows).
    Loaded(String, u64),
    /// Failed before or while loading (nothing was left behind).
    Failed(EmbedFailure),
}

fn failure(sqlstate: &str, message: String) -> EmbedFailure {
    EmbedFailure {
        sqlstate: sqlstate.to_owned(),
        message,
        detail: None,
    }
}

fn upstream_failure(frame: &Frame) -> EmbedFailure {
    let fields = Fields::decode(frame);
    failure(
        fields.sqlstate().unwrap_or("XX000"),
        fields.message().unwrap_or("load_dataset failed").to_owned(),
    )
}

/// Runs the load on the session (the upstream must be idle). The transaction status the
/// client sees afterwards is the session state's.
pub async fn run(
    io: &mut SessionIo,
    call: &LoadDatasetCall,
    settings: &DatasetSettings,
) -> Result<Outcome> {
    let kwargs: serde_json::Value = match serde_json::from_str(&call.kwargs) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Outcome::Failed(EmbedFailure {
                sqlstate: "22P02".into(),
                message: "invalid input syntax for type json".into(),
                detail: Some(format!("pgml.load_dataset kwargs: {e}")),
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
    .map_err(|e| ProxyError::Config(format!("load_dataset task: {e}")))?;
    let (mut reader, table) = match opened {
        Ok(v) => v,
        Err(e) => return Ok(Outcome::Failed(failure(e.sqlstate(), e.to_string()))),
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
    let exists =
        crate::private::simple_query(io, "SELECT to_regnamespace('pgml') IS NOT NULL").await?;
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
    let result = crate::private::simple_query(io, &setup).await?;
    if let Some(error) = result.error {
        crate::private::simple_query(io, abort).await?;
        return Ok(Outcome::Failed(upstream_failure(&error)));
    }
    match copy(io, &reader.copy_sql(&table), &mut reader).await? {
        Ok(()) => {}
        Err(f) => {
            crate::private::simple_query(io, abort).await?;
            return Ok(Outcome::Failed(f));
        }
    }
    let result = crate::private::simple_query(io, commit).await?;
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
    io: &mut SessionIo,
    sql: &str,
    reader: &mut DatasetReader,
) -> Result<std::result::Result<(), EmbedFailure>> {
    io.send_private(&Query::encode(sql));
    let mut upstream_error = None;
    loop {
        let frame = io.recv_upstream().await?;
        match frame.tag() {
            b'G' => break,
            b'E' => upstream_error = Some(upstream_failure(&frame)),
            b'Z' => {
                io.state_mut()
                    .set_transaction_status(TransactionStatus::decode(&frame)?);
                return Ok(Err(
                    upstream_error.unwrap_or_else(|| failure("XX000", "COPY did not start".into()))
                ));
            }
            b'A' | b'S' => io.send_client(&frame),
            _ => {}
        }
    }
    let mut local_error = None;
    io.send_private(&Frame::new(b'd', &reader.copy_header()));
    loop {
        // Reading is file I/O: keep the other sessions' tasks running meanwhile.
        let chunk = tokio::task::block_in_place(|| reader.next_copy_chunk());
        match chunk {
            Ok(Some(bytes)) => {
                io.send_private(&Frame::new(b'd', &bytes));
                io.flush().await?;
            }
            Ok(None) => break,
            Err(e) => {
                local_error = Some(failure(e.sqlstate(), e.to_string()));
                break;
            }
        }
    }
    match &local_error {
        None => io.send_private(&Frame::new(b'c', &[])),
        Some(f) => {
            let mut body = BytesMut::new();
            body.put_slice(f.message.replace('\0', " ").as_bytes());
            body.put_u8(0);
            io.send_private(&Frame::new(b'f', &body));
        }
    }
    loop {
        let frame = io.recv_upstream().await?;
        match frame.tag() {
            b'E' if upstream_error.is_none() => upstream_error = Some(upstream_failure(&frame)),
            b'Z' => {
                io.state_mut()
                    .set_transaction_status(TransactionStatus::decode(&frame)?);
                break;
            }
            b'A' | b'S' => io.send_client(&frame),
            _ => {}
        }
    }
    Ok(match (local_error, upstream_error) {
        (Some(f), _) | (None, Some(f)) => Err(f),
        (None, None) => Ok(()),
    })
}

/// The client's answer: a one-row result in the shape PostgresML returns.
pub fn result_frames(call: &LoadDatasetCall, table: &str, rows: u64) -> Vec<Frame> {
    let mut description = BytesMut::new();
    let mut row = BytesMut::new();
    if call.star {
        description.put_i16(2);
        field(&mut description, "table_name", 25, -1);
        field(&mut description, "rows", 20, 8);
        row.put_i16(2);
        row.put_i32(table.len() as i32);
        row.put_slice(table.as_bytes());
        let n = rows.to_string();
        row.put_i32(n.len() as i32);
        row.put_slice(n.as_bytes());
    } else {
        description.put_i16(1);
        field(&mut description, "load_dataset", 2249, -1);
        row.put_i16(1);
        let quoted = if table
            .chars()
            .any(|c| matches!(c, ',' | '(' | ')' | '"' | '\\' | ' '))
        {
            format!("\"{}\"", table.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            table.to_owned()
        };
        let composite = format!("({quoted},{rows})");
        row.put_i32(composite.len() as i32);
        row.put_slice(composite.as_bytes());
    }
    vec![
        Frame::new(b'T', &description),
        Frame::new(b'D', &row),
        Frame::new(b'C', b"SELECT 1\0"),
    ]
}

fn field(buf: &mut BytesMut, name: &str, type_oid: u32, type_len: i16) {
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    buf.put_u32(0); // table oid
    buf.put_i16(0); // column number
    buf.put_u32(type_oid);
    buf.put_i16(type_len);
    buf.put_i32(-1); // typmod
    buf.put_i16(0); // text format
}
