//! `pgml.load_dataset`: finds a dataset's files, maps its schema to Postgres types and streams its
//! rows as PostgreSQL binary COPY data in bounded chunks. No I/O to Postgres here except in
//! `load`, the tokio-postgres convenience for the CLI; the proxy drives `DatasetReader` itself.

mod csv_file;
mod hub;
mod jsonl_file;
mod load;
mod local;
mod parquet_file;
mod schema;
mod source;
mod value;

use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};

pub use load::load_dataset;
pub use schema::{quote_ident, quote_literal, Column, PgType, Schema, TableName};
pub use source::{DatasetConfig, Format, ResolvedSource, SourceOptions};
pub use value::Value;

use crate::error::BulkError;

/// A stream of rows from one file.
type Rows = Box<dyn Iterator<Item = Result<Vec<Value>, BulkError>> + Send>;

/// Target size of one COPY chunk: big enough to amortise messages, small enough to bound memory.
const CHUNK_BYTES: usize = 256 * 1024;

/// The binary COPY signature, flags and header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Reads one dataset and produces binary COPY data for it.
///
/// Send [`DatasetReader::copy_header`] first, then every chunk from
/// [`DatasetReader::next_copy_chunk`] until it returns `None`; the last chunk carries the trailer.
pub struct DatasetReader {
    resolved: ResolvedSource,
    schema: Schema,
    limit: Option<u64>,
    next_file: usize,
    current: Option<(PathBuf, Rows)>,
    rows_written: u64,
    finished: bool,
}

impl std::fmt::Debug for DatasetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetReader")
            .field("files", &self.resolved.files)
            .field("schema", &self.schema)
            .field("rows_written", &self.rows_written)
            .finish()
    }
}

impl DatasetReader {
    /// Resolves `source` (see [`source`] for the lookup order) and reads its schema.
    /// `limit` caps the number of rows (negative is an error); `kwargs` takes `split`, `revision`.
    pub fn open(
        source: &str,
        subset: Option<&str>,
        limit: Option<i64>,
        kwargs: &serde_json::Value,
        config: &DatasetConfig,
    ) -> Result<Self, BulkError> {
        let limit = limit
            .map(|l| {
                u64::try_from(l).map_err(|_| {
                    BulkError::InvalidArgument(format!("load_dataset: limit must be >= 0, got {l}"))
                })
            })
            .transpose()?;
        let options = SourceOptions::from_kwargs(kwargs)?;
        let mut resolved = source::resolve(source, subset, &options, config)?;
        // PostgresML reads `train[:limit]` when a limit is given without a split.
        if limit.is_some() && options.split.is_none() {
            let train = SourceOptions {
                split: Some("train".into()),
                ..options.clone()
            };
            let files = resolved.files.clone();
            let root = common_root(&files);
            let train_files: Vec<PathBuf> = files
                .into_iter()
                .filter(|f| source::split_matches(f, &root, &train))
                .collect();
            if !train_files.is_empty() {
                resolved.files = train_files;
            }
        }
        let Some((first_file, other_files)) = resolved.files.split_first() else {
            return Err(BulkError::DatasetNotFound(format!(
                "dataset {source:?} has no files"
            )));
        };
        let schema = match resolved.format {
            Format::Parquet => {
                let first = parquet_file::read_schema(first_file)?;
                for other in other_files {
                    if parquet_file::read_schema(other)? != first {
                        return Err(BulkError::file(
                            other,
                            "schema differs from the dataset's first file",
                        ));
                    }
                }
                first
            }
            Format::Csv => csv_file::read_schema(&resolved.files)?,
            Format::JsonLines => jsonl_file::read_schema(&resolved.files)?,
        };
        if schema.columns.is_empty() {
            return Err(BulkError::file(first_file, "no columns"));
        }
        Ok(DatasetReader {
            resolved,
            schema,
            limit,
            next_file: 0,
            current: None,
            rows_written: 0,
            finished: false,
        })
    }

    /// The dataset's columns with their Postgres types.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The files being read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.resolved.files
    }

    /// The table name without schema (`amazon_us_reviews`; `name` for `org/name`).
    pub fn table_name(&self) -> &str {
        &self.resolved.table_name
    }

    /// The schema-qualified table, e.g. `"pgml"."amazon_us_reviews"`.
    pub fn table(&self, config: &DatasetConfig) -> TableName {
        TableName {
            schema: config.schema.clone(),
            name: self.resolved.table_name.clone(),
        }
    }

    /// `CREATE TABLE` for the dataset (run `DROP TABLE IF EXISTS` first to replace, as PostgresML does).
    pub fn create_table_sql(&self, table: &TableName) -> String {
        self.schema.create_table_sql(table)
    }

    /// `DROP TABLE IF EXISTS <table>`.
    pub fn drop_table_sql(&self, table: &TableName) -> String {
        format!("DROP TABLE IF EXISTS {table}")
    }

    /// `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`.
    pub fn copy_sql(&self, table: &TableName) -> String {
        self.schema.copy_sql(table)
    }

    /// The binary COPY header (signature, flags, extension length).
    pub fn copy_header(&self) -> Bytes {
        Bytes::from_static(COPY_HEADER)
    }

    /// Rows encoded so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// The next chunk of COPY tuples (about 256 KiB); the last one ends with the trailer;
    /// then `None`. Blocking file I/O: call it from a blocking-friendly context.
    pub fn next_copy_chunk(&mut self) -> Result<Option<Bytes>, BulkError> {
        if self.finished {
            return Ok(None);
        }
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 4096);
        let ncols = i16::try_from(self.schema.columns.len())
            .map_err(|_| BulkError::InvalidArgument("more than 32767 columns".into()))?;
        while buf.len() < CHUNK_BYTES {
            if self.limit.is_some_and(|l| self.rows_written >= l) {
                self.current = None;
                break;
            }
            let Some((path, rows)) = self.current_rows()? else {
                break;
            };
            let Some(row) = rows.next() else {
                self.current = None;
                continue;
            };
            let path = path.clone();
            let row = row?;
            if row.len() != self.schema.columns.len() {
                return Err(BulkError::file(
                    &path,
                    format!("row with {} columns, expected {}", row.len(), ncols),
                ));
            }
            buf.put_i16(ncols);
            for (value, column) in row.iter().zip(&self.schema.columns) {
                value::encode_field(&mut buf, value, column.pg_type).map_err(|m| {
                    BulkError::file(
                        &path,
                        format!(
                            "row {}, column {:?}: {m}",
                            self.rows_written + 1,
                            column.name
                        ),
                    )
                })?;
            }
            self.rows_written += 1;
        }
        if self.current.is_none() && self.next_file >= self.resolved.files.len()
            || self.limit.is_some_and(|l| self.rows_written >= l)
        {
            buf.put_i16(-1);
            self.finished = true;
        }
        Ok(Some(buf.freeze()))
    }

    fn current_rows(&mut self) -> Result<Option<&mut (PathBuf, Rows)>, BulkError> {
        if self.current.is_none() {
            let Some(path) = self.resolved.files.get(self.next_file).cloned() else {
                return Ok(None);
            };
            self.next_file += 1;
            let rows = match self.resolved.format {
                Format::Parquet => {
                    if parquet_file::read_schema(&path)? != self.schema {
                        return Err(BulkError::file(
                            &path,
                            "schema differs from the dataset's first file",
                        ));
                    }
                    parquet_file::rows(&path)?
                }
                Format::Csv => csv_file::rows(&path, &self.schema)?,
                Format::JsonLines => jsonl_file::rows(&path, &self.schema)?,
            };
            self.current = Some((path, rows));
        }
        Ok(self.current.as_mut())
    }
}

fn common_root(files: &[PathBuf]) -> PathBuf {
    let mut root = files
        .first()
        .and_then(|f| f.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    while !files.iter().all(|f| f.starts_with(&root)) {
        if !root.pop() {
            break;
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(
        dir: &std::path::Path,
        source: &str,
        limit: Option<i64>,
    ) -> Result<DatasetReader, BulkError> {
        let config = DatasetConfig::from_env().with_dataset_dir(dir);
        DatasetReader::open(source, None, limit, &serde_json::Value::Null, &config)
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ragged.csv"), "a,b\n1,2\n3\n").unwrap();
        std::fs::write(dir.path().join("bad.csv"), b"a\n\xff\xfe\n").unwrap();
        let deep = format!("{{\"a\": {}1{}}}\n", "[".repeat(10_000), "]".repeat(10_000));
        std::fs::write(dir.path().join("deep.jsonl"), deep).unwrap();
        std::fs::write(dir.path().join("cut.parquet"), b"PAR1\0\0\0\0PAR1").unwrap();
        for source in ["ragged.csv", "bad.csv", "deep.jsonl", "cut.parquet"] {
            let err = open(dir.path(), source, None).unwrap_err();
            assert_eq!(err.sqlstate(), "22000", "{source}: {err}");
        }
    }

    #[test]
    fn limit_is_checked_and_bounds_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.csv"), "n\n1\n2\n3\n").unwrap();
        let err = open(dir.path(), "n.csv", Some(-1)).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        let mut reader = open(dir.path(), "n.csv", Some(i64::MAX)).unwrap();
        while reader.next_copy_chunk().unwrap().is_some() {}
        assert_eq!(reader.rows_written(), 3);
        let mut reader = open(dir.path(), "n.csv", Some(2)).unwrap();
        while reader.next_copy_chunk().unwrap().is_some() {}
        assert_eq!(reader.rows_written(), 2);
    }
}
