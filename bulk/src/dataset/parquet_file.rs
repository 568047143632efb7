//! Parquet files: the Postgres schema from the file's column types, and rows streamed one row
//! group at a time (parquet's record reader), so memory stays bounded by a row group. A reader
//! panic on a malformed file (the parquet crate has had such bugs) becomes an error instead.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::types::Type;

use super::schema::{Column, PgType, Schema};
use super::value::Value;
use super::Rows;
use crate::error::BulkError;

fn open(path: &Path) -> Result<SerializedFileReader<File>, BulkError> {
    let file = File::open(path).map_err(|e| BulkError::io(path, e))?;
    guarded(path, || {
        SerializedFileReader::new(file).map_err(|e| BulkError::file(path, e))
    })
}

/// Runs `f`, turning a panic inside the parquet reader into an error for `path`.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, BulkError>) -> Result<T, BulkError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(BulkError::file(
            path,
            "malformed parquet file (the parquet reader failed on it)",
        ))
    })
}

/// The schema of a parquet file's top-level columns.
pub fn read_schema(path: &Path) -> Result<Schema, BulkError> {
    guarded(path, || schema_of(path))
}

fn schema_of(path: &Path) -> Result<Schema, BulkError> {
    let reader = open(path)?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .clone();
    let columns = root
        .get_fields()
        .iter()
        .map(|field| {
            Ok(Column {
                name: field.name().to_string(),
                pg_type: pg_type(field).map_err(|m| BulkError::file(path, m))?,
            })
        })
        .collect::<Result<Vec<_>, BulkError>>()?;
    Ok(Schema { columns })
}

fn pg_type(field: &Type) -> Result<PgType, String> {
    if !field.is_primitive() {
        return Ok(PgType::Jsonb);
    }
    let info = field.get_basic_info();
    if info.repetition() == parquet::basic::Repetition::REPEATED {
        return Ok(PgType::Jsonb);
    }
    let logical = info.logical_type_ref();
    let converted = info.converted_type();
    let unsupported = || {
        format!(
            "column {:?}: unsupported parquet type {field:?}",
            field.name()
        )
    };
    Ok(match field.get_physical_type() {
        PhysicalType::BOOLEAN => PgType::Boolean,
        PhysicalType::INT32 => match (logical, converted) {
            (Some(LogicalType::Date), _) | (_, ConvertedType::DATE) => PgType::Date,
            (Some(LogicalType::Decimal { .. }), _) | (_, ConvertedType::DECIMAL) => PgType::Double,
            (
                Some(LogicalType::Integer {
                    bit_width: 8 | 16,
                    is_signed: true,
                }),
                _,
            )
            | (Some(LogicalType::Integer { bit_width: 8, .. }), _)
            | (_, ConvertedType::INT_8 | ConvertedType::INT_16 | ConvertedType::UINT_8) => {
                PgType::SmallInt
            }
            (
                Some(LogicalType::Integer {
                    bit_width: 32,
                    is_signed: false,
                }),
                _,
            )
            | (_, ConvertedType::UINT_32) => PgType::BigInt,
            (Some(LogicalType::Time { .. }), _) => return Err(unsupported()),
            _ => PgType::Integer,
        },
        PhysicalType::INT64 => match logical {
            Some(LogicalType::Timestamp { .. }) => PgType::Timestamp,
            Some(LogicalType::Decimal { .. }) => PgType::Double,
            Some(LogicalType::Time { .. }) => return Err(unsupported()),
            _ if matches!(
                converted,
                ConvertedType::TIMESTAMP_MILLIS | ConvertedType::TIMESTAMP_MICROS
            ) =>
            {
                PgType::Timestamp
            }
            _ => PgType::BigInt,
        },
        PhysicalType::INT96 => PgType::Timestamp,
        PhysicalType::FLOAT => PgType::Real,
        PhysicalType::DOUBLE => PgType::Double,
        PhysicalType::BYTE_ARRAY => match (logical, converted) {
            (Some(LogicalType::Json), _) | (_, ConvertedType::JSON) => PgType::Jsonb,
            (Some(LogicalType::String | LogicalType::Enum), _)
            | (_, ConvertedType::UTF8 | ConvertedType::ENUM) => PgType::Text,
            (Some(LogicalType::Decimal { .. }), _) | (_, ConvertedType::DECIMAL) => PgType::Double,
            _ => PgType::Bytea,
        },
        PhysicalType::FIXED_LEN_BYTE_ARRAY => match logical {
            Some(LogicalType::Float16) => PgType::Real,
            Some(LogicalType::Decimal { .. }) => PgType::Double,
            _ => PgType::Bytea,
        },
    })
}

/// Rows of a parquet file, streamed row group by row group; after an error, no more rows.
pub fn rows(path: &Path) -> Result<Rows, BulkError> {
    let reader: Box<dyn FileReader> = Box::new(open(path)?);
    let path: PathBuf = path.to_path_buf();
    let mut rows = guarded(&path, || Ok(RowIter::from_file_into(reader)))?;
    let mut failed = false;
    let iter = std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let next = guarded(&path, || Ok(rows.next())).transpose()?;
        let row = next.and_then(|row| {
            row.map_err(|e| BulkError::file(&path, e))?
                .into_columns()
                .into_iter()
                .map(|(name, field)| {
                    value(field)
                        .map_err(|m| BulkError::file(&path, format!("column {name:?}: {m}")))
                })
                .collect()
        });
        failed = row.is_err();
        Some(row)
    });
    Ok(Box::new(iter))
}

fn value(field: Field) -> Result<Value, String> {
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(v) => Value::Int(v.into()),
        Field::Short(v) => Value::Int(v.into()),
        Field::Int(v) => Value::Int(v.into()),
        Field::Long(v) => Value::Int(v),
        Field::UByte(v) => Value::Int(v.into()),
        Field::UShort(v) => Value::Int(v.into()),
        Field::UInt(v) => Value::Int(v.into()),
        Field::ULong(v) => {
            Value::Int(i64::try_from(v).map_err(|_| format!("{v} is out of bigint range"))?)
        }
        Field::Float16(v) => Value::Float(f64::from(v)),
        Field::Float(v) => Value::Float(v.into()),
        Field::Double(v) => Value::Float(v),
        Field::Decimal(d) => Value::Float(decimal_to_f64(&d)),
        Field::Str(s) => Value::Text(s),
        Field::Bytes(b) => Value::Bytes(b.data().to_vec()),
        Field::Date(d) => Value::Date(d),
        Field::TimestampMillis(t) => Value::TimestampMicros(t.saturating_mul(1000)),
        Field::TimestampMicros(t) => Value::TimestampMicros(t),
        Field::TimeMillis(_) | Field::TimeMicros(_) => {
            return Err("time-of-day values are not supported".into())
        }
        group @ (Field::Group(_) | Field::ListInternal(_) | Field::MapInternal(_)) => {
            Value::Json(group.to_json_value())
        }
    })
}

/// Decimal as a double: the unscaled big-endian integer divided by 10^scale.
fn decimal_to_f64(d: &parquet::data_type::Decimal) -> f64 {
    let bytes = d.data();
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut unscaled: i128 = if negative { -1 } else { 0 };
    for b in bytes.iter().take(16) {
        unscaled = (unscaled << 8) | i128::from(*b);
    }
    unscaled as f64 / 10f64.powi(d.scale())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_reader_panics_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"PAR1 this is not a parquet file PAR1").unwrap();
        assert!(read_schema(&path).is_err());
        assert!(rows(&path).is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(read_schema(&path).is_err());
        let err = guarded(&path, || -> Result<(), BulkError> { panic!("reader bug") }).unwrap_err();
        assert_eq!(err.sqlstate(), "22000");
        assert!(err.to_string().contains("malformed parquet"), "{err}");
    }
}
