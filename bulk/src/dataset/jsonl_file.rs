//! JSON lines files: column types inferred by a first streaming pass (keys in order of first
//! appearance; bool, bigint, double precision, text, else jsonb), then rows streamed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::schema::{Column, PgType, Schema};
use super::value::Value;
use super::Rows;
use crate::error::BulkError;

fn objects(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Map<String, Json>, BulkError>>, BulkError> {
    let file = File::open(path).map_err(|e| BulkError::io(path, e))?;
    let path = path.to_path_buf();
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(move |(n, line)| {
            let line = line.map_err(|e| BulkError::io(&path, e))?;
            match serde_json::from_str(&line) {
                Ok(Json::Object(map)) => Ok(map),
                Ok(_) => Err(BulkError::file(
                    &path,
                    format!("line {}: not a JSON object", n + 1),
                )),
                Err(e) => Err(BulkError::file(&path, format!("line {}: {e}", n + 1))),
            }
        }))
}

fn widen(current: Option<PgType>, value: &Json) -> Option<PgType> {
    let value_type = match value {
        Json::Null => return current,
        Json::Bool(_) => PgType::Boolean,
        Json::Number(n) if n.is_i64() => PgType::BigInt,
        Json::Number(_) => PgType::Double,
        Json::String(_) => PgType::Text,
        Json::Array(_) | Json::Object(_) => PgType::Jsonb,
    };
    Some(match (current, value_type) {
        (None, t) => t,
        (Some(a), b) if a == b => a,
        (Some(PgType::BigInt), PgType::Double) | (Some(PgType::Double), PgType::BigInt) => {
            PgType::Double
        }
        _ => PgType::Jsonb,
    })
}

/// Infers the schema over all files.
pub fn read_schema(files: &[PathBuf]) -> Result<Schema, BulkError> {
    let mut columns: Vec<(String, Option<PgType>)> = Vec::new();
    for path in files {
        for object in objects(path)? {
            for (key, value) in object? {
                match columns.iter_mut().find(|(name, _)| *name == key) {
                    Some((_, t)) => *t = widen(*t, &value),
                    None => columns.push((key, widen(None, &value))),
                }
            }
        }
    }
    Ok(Schema {
        columns: columns
            .into_iter()
            .map(|(name, t)| Column {
                name,
                pg_type: t.unwrap_or(PgType::Text),
            })
            .collect(),
    })
}

/// Rows of one JSON lines file; a missing key is NULL.
pub fn rows(path: &Path, schema: &Schema) -> Result<Rows, BulkError> {
    let columns = schema.columns.clone();
    let iter = objects(path)?.map(move |object| {
        let mut object = object?;
        Ok(columns
            .iter()
            .map(|c| convert(object.remove(&c.name).unwrap_or(Json::Null), c.pg_type))
            .collect())
    });
    Ok(Box::new(iter))
}

fn convert(json: Json, pg_type: PgType) -> Value {
    match (json, pg_type) {
        (Json::Null, _) => Value::Null,
        (Json::Bool(b), PgType::Boolean) => Value::Bool(b),
        (Json::Number(n), PgType::BigInt) if n.is_i64() => {
            Value::Int(n.as_i64().unwrap_or_default())
        }
        (Json::Number(n), PgType::Double) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        (Json::String(s), PgType::Text) => Value::Text(s),
        (other, _) => Value::Json(other),
    }
}
