//! The table being backfilled: its key and vector column types read from the catalog (the column
//! is created as `vector(dim)` when absent) and the SQL each stage runs against it.

use tokio_postgres::Client;

use super::options::BackfillOptions;
use crate::dataset::quote_ident;
use crate::error::BulkError;

/// How the vector column stores embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    /// pgvector `vector`.
    Vector,
    /// `real[]` (what `pgml.embed` returns).
    RealArray,
}

/// Everything the workers need to know about the table, with the SQL prepared as text.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub kind: ColumnKind,
    pub dimension: usize,
    pub count_sql: String,
    pub first_page_sql: String,
    pub next_page_sql: String,
    pub temp_table_sql: String,
    pub copy_sql: String,
    pub update_sql: String,
    pub filled_sql: String,
    pub table_sql: String,
    pub column_sql: String,
}

/// The temp table each write connection loads a batch into (its columns are named so they cannot
/// shadow the user's columns in the text expression).
const BATCH_TABLE: &str = "pgml_backfill_batch";

async fn column_type(
    client: &Client,
    table_sql: &str,
    column: &str,
) -> Result<Option<String>, BulkError> {
    let row = client
        .query_opt(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            &[&table_sql, &column],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

impl Target {
    /// Reads the key and column types, creating the column when absent.
    pub(crate) async fn prepare(
        client: &Client,
        options: &BackfillOptions,
        dimension: usize,
    ) -> Result<Self, BulkError> {
        let table_sql = options.table_sql();
        let key_type = column_type(client, &table_sql, &options.key)
            .await?
            .ok_or_else(|| {
                BulkError::InvalidArgument(format!(
                    "table {} has no key column {:?}",
                    options.table, options.key
                ))
            })?;
        let kind = match column_type(client, &table_sql, &options.column).await? {
            None => {
                client
                    .batch_execute(&format!(
                        "CREATE EXTENSION IF NOT EXISTS vector; ALTER TABLE {table_sql} ADD COLUMN IF NOT EXISTS {} vector({dimension})",
                        quote_ident(&options.column)
                    ))
                    .await?;
                ColumnKind::Vector
            }
            Some(t) if t == "vector" || t == format!("vector({dimension})") => ColumnKind::Vector,
            Some(t) if t == "real[]" => ColumnKind::RealArray,
            Some(t) => {
                return Err(BulkError::InvalidArgument(format!(
                    "column {:?} of {} is {t}, but model {} gives vector({dimension}) (use a vector({dimension}) or real[] column)",
                    options.column, options.table, options.model
                )))
            }
        };
        let column_sql = quote_ident(&options.column);
        let key = format!("{table_sql}.{}", quote_ident(&options.key));
        let column = format!("{table_sql}.{column_sql}");
        let expr = format!("({})::text", options.text_expr);
        let pending = format!("{column} IS NULL AND {expr} IS NOT NULL");
        let page = |bound: &str| {
            format!(
                "SELECT {key}::text, {expr}, md5({expr}) FROM {table_sql} WHERE {pending}{bound} ORDER BY {key} LIMIT $1"
            )
        };
        let vector_type = match kind {
            ColumnKind::Vector => "vector",
            ColumnKind::RealArray => "real[]",
        };
        Ok(Target {
            kind,
            dimension,
            count_sql: format!("SELECT count(*) FROM {table_sql} WHERE {pending}"),
            first_page_sql: page(""),
            next_page_sql: page(&format!(" AND {key} > $2::text::{key_type}")),
            temp_table_sql: format!(
                "CREATE TEMP TABLE IF NOT EXISTS {BATCH_TABLE} (pgml_bf_key text, pgml_bf_md5 text, pgml_bf_vec {vector_type}) ON COMMIT DELETE ROWS"
            ),
            copy_sql: format!("COPY {BATCH_TABLE} (pgml_bf_key, pgml_bf_md5, pgml_bf_vec) FROM STDIN (FORMAT binary)"),
            // Re-checks NULL (never written twice) and the text's md5 (never a stale vector).
            update_sql: format!(
                "UPDATE {table_sql} SET {column_sql} = b.pgml_bf_vec FROM {BATCH_TABLE} b \
                 WHERE {key} = b.pgml_bf_key::{key_type} AND {column} IS NULL AND md5({expr}) = b.pgml_bf_md5"
            ),
            filled_sql: format!("SELECT count(*) FROM {table_sql} WHERE {column} IS NOT NULL"),
            table_sql,
            column_sql,
        })
    }

    /// `CREATE INDEX CONCURRENTLY` for the column (cosine distance, as the article queries with `<=>`).
    pub(crate) fn index_sql(
        &self,
        table: &str,
        kind: super::IndexKind,
        lists: u32,
    ) -> Result<String, BulkError> {
        if self.kind != ColumnKind::Vector {
            return Err(BulkError::InvalidArgument(
                "an index needs a vector column; this one is real[]".into(),
            ));
        }
        let base = table.rsplit('.').next().unwrap_or(table);
        let column = self.column_sql.trim_matches('"');
        let (method, with) = match kind {
            super::IndexKind::IvfFlat => ("ivfflat", format!(" WITH (lists = {lists})")),
            super::IndexKind::Hnsw => ("hnsw", String::new()),
        };
        let name = quote_ident(&format!("{base}_{column}_{method}_idx"));
        Ok(format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {} USING {method} ({} vector_cosine_ops){with}",
            self.table_sql, self.column_sql
        ))
    }
}
