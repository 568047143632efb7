//! What a backfill is asked to do (the CLI's flags), validated before any connection is made.

use crate::dataset::quote_ident;
use crate::error::BulkError;

/// Which pgvector index to build at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// `ivfflat` with `lists` (from the row count when not given).
    IvfFlat,
    /// `hnsw` with pgvector's defaults.
    Hnsw,
}

impl std::str::FromStr for IndexKind {
    type Err = BulkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ivfflat" => Ok(IndexKind::IvfFlat),
            "hnsw" => Ok(IndexKind::Hnsw),
            other => Err(BulkError::InvalidArgument(format!(
                "unknown index kind {other:?} (use ivfflat or hnsw)"
            ))),
        }
    }
}

/// A backfill: fill `column` of `table` with embeddings of `text_expr` for rows where it is NULL.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Table, optionally schema-qualified (`reviews` or `public.reviews`); each part is quoted.
    pub table: String,
    /// The vector column to fill (created as `vector(dim)` when absent; `real[]` also accepted).
    pub column: String,
    /// SQL expression over the table's columns giving the text to embed (trusted input).
    pub text_expr: String,
    /// Model id, as for `pgml.embed`.
    pub model: String,
    /// `pgml.embed` kwargs.
    pub kwargs: serde_json::Value,
    /// Unique, ordered key column used for keyset pagination.
    pub key: String,
    /// Rows per batch (one engine call, one COPY + UPDATE, one commit).
    pub batch_size: usize,
    /// Batches in flight at once (each on its own write connection).
    pub concurrency: usize,
    /// Build this index CONCURRENTLY at the end.
    pub create_index: Option<IndexKind>,
    /// ivfflat lists; None = rows / 1000 (at most 1M rows), sqrt(rows) above, at least 1.
    pub lists: Option<u32>,
}

impl BackfillOptions {
    /// Options with the CLI defaults: key `id`, batches of 1,000 rows, 2 in flight, no index.
    pub fn new(table: &str, column: &str, text_expr: &str, model: &str) -> Self {
        BackfillOptions {
            table: table.to_string(),
            column: column.to_string(),
            text_expr: text_expr.to_string(),
            model: model.to_string(),
            kwargs: serde_json::json!({}),
            key: "id".to_string(),
            batch_size: 1000,
            concurrency: 2,
            create_index: None,
            lists: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BulkError> {
        let bad = |m: String| Err(BulkError::InvalidArgument(m));
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return bad(format!(
                "batch size must be 1..=1000000, got {}",
                self.batch_size
            ));
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return bad(format!(
                "concurrency must be 1..=64, got {}",
                self.concurrency
            ));
        }
        for (what, value) in [
            ("table", &self.table),
            ("column", &self.column),
            ("key", &self.key),
        ] {
            if value.trim().is_empty() {
                return bad(format!("{what} is empty"));
            }
        }
        if self.text_expr.trim().is_empty() {
            return bad("text expression is empty".into());
        }
        if !self.kwargs.is_object() {
            return bad(format!("kwargs must be a JSON object, got {}", self.kwargs));
        }
        Ok(())
    }

    /// The table as SQL: each dot-separated part quoted.
    pub(crate) fn table_sql(&self) -> String {
        self.table
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// ivfflat lists for `rows`, as pgvector's README recommends.
pub(crate) fn default_lists(rows: u64) -> u32 {
    let lists = if rows <= 1_000_000 {
        rows / 1000
    } else {
        (rows as f64).sqrt() as u64
    };
    lists.clamp(1, 32_768) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follow_pgvector_guidance() {
        assert_eq!(default_lists(0), 1);
        assert_eq!(default_lists(250_000), 250);
        assert_eq!(default_lists(4_000_000), 2000);
    }

    #[test]
    fn table_parts_are_quoted_and_bad_options_rejected() {
        let mut o = BackfillOptions::new("app.Reviews", "emb", "body", "m");
        assert_eq!(o.table_sql(), r#""app"."Reviews""#);
        assert!(o.validate().is_ok());
        o.concurrency = 0;
        assert_eq!(o.validate().unwrap_err().sqlstate(), "22023");
        assert!("gist".parse::<IndexKind>().is_err());
    }
}
