//! Column types of a loaded dataset and the SQL that creates its table. Mapping follows
//! PostgresML's `load_dataset`: string->text, int64->bigint, int32->integer, int16/int8->smallint,
//! float64->double precision, float32/16->real, bool->boolean, lists/structs->jsonb.

use std::fmt;

/// A Postgres column type a dataset column is loaded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    /// `boolean`
    Boolean,
    /// `smallint` (int8, int16, uint8)
    SmallInt,
    /// `integer` (int32, uint16)
    Integer,
    /// `bigint` (int64, uint32, uint64 within range)
    BigInt,
    /// `real` (float32, float16)
    Real,
    /// `double precision` (float64)
    Double,
    /// `text` (string)
    Text,
    /// `bytea` (binary without a string annotation)
    Bytea,
    /// `date`
    Date,
    /// `timestamp` (without time zone, microsecond precision)
    Timestamp,
    /// `jsonb` (lists, structs, maps)
    Jsonb,
}

impl PgType {
    /// The type's name in SQL.
    pub fn sql_name(self) -> &'static str {
        match self {
            PgType::Boolean => "boolean",
            PgType::SmallInt => "smallint",
            PgType::Integer => "integer",
            PgType::BigInt => "bigint",
            PgType::Real => "real",
            PgType::Double => "double precision",
            PgType::Text => "text",
            PgType::Bytea => "bytea",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp",
            PgType::Jsonb => "jsonb",
        }
    }
}

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// One column of a dataset: its name as in the files and its Postgres type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name, kept as in the dataset (quoted in SQL, so case is preserved).
    pub name: String,
    /// The Postgres type it is loaded as.
    pub pg_type: PgType,
}

/// The columns of a dataset, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// The columns.
    pub columns: Vec<Column>,
}

/// A schema-qualified table name, quoted when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// Schema (`pgml` for load_dataset).
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// Quotes an identifier for SQL: `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (standard_conforming_strings on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Schema {
    /// `CREATE TABLE <table> (<columns>)`.
    pub fn create_table_sql(&self, table: &TableName) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.pg_type))
            .collect();
        format!("CREATE TABLE {table} ({})", columns.join(", "))
    }

    /// `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`.
    pub fn copy_sql(&self, table: &TableName) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            columns.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_table_quotes_identifiers() {
        let schema = Schema {
            columns: vec![
                Column {
                    name: "Review \"Body\"".into(),
                    pg_type: PgType::Text,
                },
                Column {
                    name: "stars".into(),
                    pg_type: PgType::Integer,
                },
            ],
        };
        let table = TableName {
            schema: "pgml".into(),
            name: "my\"set".into(),
        };
        assert_eq!(
            schema.create_table_sql(&table),
            r#"CREATE TABLE "pgml"."my""set" ("Review ""Body""" text, "stars" integer)"#
        );
        assert_eq!(
            schema.copy_sql(&table),
            r#"COPY "pgml"."my""set" ("Review ""Body""", "stars") FROM STDIN (FORMAT binary)"#
        );
    }
}
