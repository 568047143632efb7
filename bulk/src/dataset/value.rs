//! One cell read from a dataset file, before it is encoded for Postgres, and its encoding into a
//! binary COPY buffer for a given column type (with range checks, never silent truncation).

use bytes::{BufMut, BytesMut};

use super::schema::PgType;

/// Days between 1970-01-01 (Unix, parquet) and 2000-01-01 (Postgres epoch).
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400 * 1_000_000;

/// A value read from a dataset file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL (missing or null in the file).
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer.
    Int(i64),
    /// Any float.
    Float(f64),
    /// A string.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00.
    TimestampMicros(i64),
    /// A list, struct or map.
    Json(serde_json::Value),
}

/// Appends one binary COPY field (length prefix + payload) for `value` as `pg_type`.
/// Returns a description of the mismatch when the value does not fit the column.
pub fn encode_field(buf: &mut BytesMut, value: &Value, pg_type: PgType) -> Result<(), String> {
    fn put<const N: usize>(buf: &mut BytesMut, bytes: [u8; N]) {
        buf.put_i32(N as i32);
        buf.put_slice(&bytes);
    }
    fn put_var(buf: &mut BytesMut, bytes: &[u8]) -> Result<(), String> {
        let len = i32::try_from(bytes.len()).map_err(|_| "value larger than 2 GiB".to_string())?;
        buf.put_i32(len);
        buf.put_slice(bytes);
        Ok(())
    }
    let mismatch = || format!("value {value:?} does not fit a {pg_type} column");
    match (pg_type, value) {
        (_, Value::Null) => buf.put_i32(-1),
        (PgType::Boolean, Value::Bool(b)) => put(buf, [u8::from(*b)]),
        (PgType::SmallInt, Value::Int(i)) => put(
            buf,
            i16::try_from(*i).map_err(|_| mismatch())?.to_be_bytes(),
        ),
        (PgType::Integer, Value::Int(i)) => put(
            buf,
            i32::try_from(*i).map_err(|_| mismatch())?.to_be_bytes(),
        ),
        (PgType::BigInt, Value::Int(i)) => put(buf, i.to_be_bytes()),
        (PgType::Real, Value::Float(f)) => put(buf, (*f as f32).to_be_bytes()),
        (PgType::Real, Value::Int(i)) => put(buf, (*i as f32).to_be_bytes()),
        (PgType::Double, Value::Float(f)) => put(buf, f.to_be_bytes()),
        (PgType::Double, Value::Int(i)) => put(buf, (*i as f64).to_be_bytes()),
        (PgType::Text, Value::Text(s)) => put_var(buf, s.as_bytes())?,
        (PgType::Text, Value::Json(j)) => put_var(buf, j.to_string().as_bytes())?,
        (PgType::Bytea, Value::Bytes(b)) => put_var(buf, b)?,
        (PgType::Date, Value::Date(d)) => {
            let days = i64::from(*d) - PG_EPOCH_DAYS;
            put(
                buf,
                i32::try_from(days).map_err(|_| mismatch())?.to_be_bytes(),
            )
        }
        (PgType::Timestamp, Value::TimestampMicros(t)) => {
            put(buf, (t - PG_EPOCH_MICROS).to_be_bytes())
        }
        (PgType::Jsonb, Value::Text(s)) => {
            let parsed: serde_json::Value =
                serde_json::from_str(s).map_err(|e| format!("invalid JSON {s:?}: {e}"))?;
            put_jsonb(buf, &parsed)?
        }
        (PgType::Jsonb, Value::Json(j)) => put_jsonb(buf, j)?,
        (PgType::Jsonb, other) => put_jsonb(buf, &scalar_json(other))?,
        _ => return Err(mismatch()),
    }
    Ok(())
}

/// jsonb's binary format: a version byte (1) followed by the JSON text.
fn put_jsonb(buf: &mut BytesMut, json: &serde_json::Value) -> Result<(), String> {
    let text = json.to_string();
    let len = i32::try_from(text.len() + 1).map_err(|_| "value larger than 2 GiB".to_string())?;
    buf.put_i32(len);
    buf.put_u8(1);
    buf.put_slice(text.as_bytes());
    Ok(())
}

fn scalar_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(s) => s.clone().into(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned().into(),
        Value::Date(d) => (*d).into(),
        Value::TimestampMicros(t) => (*t).into(),
        Value::Json(j) => j.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: Value, pg_type: PgType) -> Result<Vec<u8>, String> {
        let mut buf = BytesMut::new();
        encode_field(&mut buf, &value, pg_type)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(
            encoded(Value::Int(-2), PgType::SmallInt).unwrap(),
            [0, 0, 0, 2, 0xff, 0xfe]
        );
        assert!(encoded(Value::Int(40_000), PgType::SmallInt).is_err());
        assert!(encoded(Value::Int(1 << 40), PgType::Integer).is_err());
    }

    #[test]
    fn null_text_jsonb_and_dates_use_postgres_binary_formats() {
        assert_eq!(encoded(Value::Null, PgType::Text).unwrap(), [0xff; 4]);
        assert_eq!(
            encoded(Value::Text("hé".into()), PgType::Text).unwrap(),
            [0, 0, 0, 3, b'h', 0xc3, 0xa9]
        );
        assert_eq!(
            encoded(Value::Json(serde_json::json!([1])), PgType::Jsonb).unwrap(),
            [0, 0, 0, 4, 1, b'[', b'1', b']']
        );
        // 2000-01-01 is day 0 for Postgres.
        assert_eq!(
            encoded(Value::Date(10_957), PgType::Date).unwrap(),
            [0, 0, 0, 4, 0, 0, 0, 0]
        );
        assert!(encoded(Value::Text("x".into()), PgType::Integer).is_err());
    }
}
