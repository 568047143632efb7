//! CSV files (header row required): column types inferred by a first streaming pass over every
//! file (boolean, bigint, double precision, else text; empty cells are NULL), then rows streamed.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::schema::{Column, PgType, Schema};
use super::value::Value;
use super::Rows;
use crate::error::BulkError;

fn reader(path: &Path) -> Result<csv::Reader<File>, BulkError> {
    let file = File::open(path).map_err(|e| BulkError::io(path, e))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file))
}

/// The narrowest type that holds every non-empty cell seen so far.
fn widen(current: Option<PgType>, cell: &str) -> Option<PgType> {
    if cell.is_empty() {
        return current;
    }
    let cell_type = if parse_bool(cell).is_some() {
        PgType::Boolean
    } else if cell.parse::<i64>().is_ok() {
        PgType::BigInt
    } else if cell.parse::<f64>().is_ok() {
        PgType::Double
    } else {
        PgType::Text
    };
    Some(match (current, cell_type) {
        (None, t) => t,
        (Some(a), b) if a == b => a,
        (Some(PgType::BigInt), PgType::Double) | (Some(PgType::Double), PgType::BigInt) => {
            PgType::Double
        }
        _ => PgType::Text,
    })
}

fn parse_bool(cell: &str) -> Option<bool> {
    if cell.eq_ignore_ascii_case("true") {
        Some(true)
    } else if cell.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Infers the schema over all files; every file must have the same header.
pub fn read_schema(files: &[PathBuf]) -> Result<Schema, BulkError> {
    let mut names: Option<Vec<String>> = None;
    let mut types: Vec<Option<PgType>> = Vec::new();
    for path in files {
        let mut reader = reader(path)?;
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| BulkError::file(path, e))?
            .iter()
            .map(str::to_string)
            .collect();
        match &names {
            None => {
                types = vec![None; header.len()];
                names = Some(header);
            }
            Some(first) if *first != header => {
                return Err(BulkError::file(
                    path,
                    format!("header {header:?} differs from {first:?}"),
                ))
            }
            Some(_) => {}
        }
        for record in reader.records() {
            let record = record.map_err(|e| BulkError::file(path, e))?;
            for (slot, cell) in types.iter_mut().zip(record.iter()) {
                *slot = widen(*slot, cell);
            }
        }
    }
    let columns = names
        .unwrap_or_default()
        .into_iter()
        .zip(types)
        .map(|(name, t)| Column {
            name,
            pg_type: t.unwrap_or(PgType::Text),
        })
        .collect();
    Ok(Schema { columns })
}

/// Rows of one CSV file, converted to the inferred schema.
pub fn rows(path: &Path, schema: &Schema) -> Result<Rows, BulkError> {
    let types: Vec<PgType> = schema.columns.iter().map(|c| c.pg_type).collect();
    let path = path.to_path_buf();
    let iter = reader(&path)?.into_records().map(move |record| {
        let record = record.map_err(|e| BulkError::file(&path, e))?;
        types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                cell_value(record.get(i).unwrap_or(""), *t).map_err(|m| BulkError::file(&path, m))
            })
            .collect()
    });
    Ok(Box::new(iter))
}

fn cell_value(cell: &str, pg_type: PgType) -> Result<Value, String> {
    if cell.is_empty() {
        return Ok(Value::Null);
    }
    let bad = || format!("{cell:?} is not a valid {pg_type}");
    Ok(match pg_type {
        PgType::Boolean => Value::Bool(parse_bool(cell).ok_or_else(bad)?),
        PgType::BigInt => Value::Int(cell.parse().map_err(|_| bad())?),
        PgType::Double => Value::Float(cell.parse().map_err(|_| bad())?),
        _ => Value::Text(cell.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_widens_ints_to_doubles_and_mixed_to_text() {
        let t = ["1", "", "2"].iter().fold(None, |t, c| widen(t, c));
        assert_eq!(t, Some(PgType::BigInt));
        assert_eq!(widen(t, "2.5"), Some(PgType::Double));
        assert_eq!(widen(Some(PgType::Boolean), "1"), Some(PgType::Text));
        assert_eq!(widen(None, "TRUE"), Some(PgType::Boolean));
    }
}
