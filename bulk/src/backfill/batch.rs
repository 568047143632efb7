//! One batch of a backfill: rows read by key, their embeddings, and the binary COPY data that
//! carries (key, md5 of text, vector) into the write connection's temp table.

use bytes::{BufMut, Bytes, BytesMut};

use super::target::ColumnKind;
use crate::error::BulkError;

/// `float4`'s type oid, written into binary `real[]` values.
const FLOAT4_OID: u32 = 700;

/// Rows read for one batch.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub keys: Vec<String>,
    pub texts: Vec<String>,
    pub md5s: Vec<String>,
}

/// The texts of a batch as engine calls within the engine's default input limits: each text
/// cut to `DEFAULT_MAX_TEXT_BYTES` (on a character boundary; the model reads only its first few
/// hundred tokens, so the embedding is the same), at most `DEFAULT_MAX_TEXTS_PER_CALL` texts and
/// `DEFAULT_MAX_CALL_BYTES` bytes per call. Stored rows can be any size; calls cannot.
pub(crate) fn engine_calls(texts: &[String]) -> Vec<Vec<String>> {
    let mut calls: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0usize;
    for text in texts {
        let mut end = text.len().min(pgml_engine::DEFAULT_MAX_TEXT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = text.get(..end).unwrap_or_default().to_string();
        let fits = calls.last().is_some_and(|call| {
            call.len() < pgml_engine::DEFAULT_MAX_TEXTS_PER_CALL
                && bytes + text.len() <= pgml_engine::DEFAULT_MAX_CALL_BYTES
        });
        if !fits {
            calls.push(Vec::new());
            bytes = 0;
        }
        bytes += text.len();
        if let Some(call) = calls.last_mut() {
            call.push(text);
        }
    }
    calls
}

/// Binary COPY data for a batch's temp table rows.
pub(crate) fn copy_data(
    batch: &Batch,
    vectors: &[Vec<f32>],
    kind: ColumnKind,
    dimension: usize,
) -> Result<Bytes, BulkError> {
    if vectors.len() != batch.keys.len() {
        return Err(BulkError::Internal(format!(
            "engine returned {} vectors for {} texts",
            vectors.len(),
            batch.keys.len()
        )));
    }
    let mut buf = BytesMut::with_capacity(64 + vectors.len() * (dimension * 4 + 80));
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
    for ((key, md5), vector) in batch.keys.iter().zip(&batch.md5s).zip(vectors) {
        if vector.len() != dimension {
            return Err(BulkError::Internal(format!(
                "engine returned a {}-dimensional vector, expected {dimension}",
                vector.len()
            )));
        }
        buf.put_i16(3);
        for text in [key, md5] {
            buf.put_i32(text.len() as i32);
            buf.put_slice(text.as_bytes());
        }
        match kind {
            // pgvector's binary format: int16 dim, int16 unused, float4 values.
            ColumnKind::Vector => {
                buf.put_i32(4 + 4 * dimension as i32);
                buf.put_i16(dimension as i16);
                buf.put_i16(0);
                vector.iter().for_each(|v| buf.put_f32(*v));
            }
            // Array binary format: ndim, has-null flag, element oid, then (length, lower bound) per dim.
            ColumnKind::RealArray => {
                buf.put_i32(20 + 8 * dimension as i32);
                buf.put_i32(1);
                buf.put_i32(0);
                buf.put_u32(FLOAT4_OID);
                buf.put_i32(dimension as i32);
                buf.put_i32(1);
                for v in vector {
                    buf.put_i32(4);
                    buf.put_f32(*v);
                }
            }
        }
    }
    buf.put_i16(-1);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgml_engine::{DEFAULT_MAX_CALL_BYTES, DEFAULT_MAX_TEXTS_PER_CALL, DEFAULT_MAX_TEXT_BYTES};

    #[test]
    fn engine_calls_stay_within_the_engine_input_limits() {
        let huge = "é".repeat(DEFAULT_MAX_TEXT_BYTES);
        let calls = engine_calls(&[huge, "short".to_string()]);
        assert_eq!(calls.len(), 1);
        assert!(calls[0][0].len() <= DEFAULT_MAX_TEXT_BYTES);
        assert!(calls[0][0].starts_with('é'));
        assert_eq!(calls[0][1], "short");

        let many = vec!["x".to_string(); DEFAULT_MAX_TEXTS_PER_CALL + 1];
        let calls = engine_calls(&many);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            [DEFAULT_MAX_TEXTS_PER_CALL, 1]
        );

        let big = vec!["y".repeat(DEFAULT_MAX_TEXT_BYTES); 100];
        let calls = engine_calls(&big);
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 100);
        for call in &calls {
            assert!(call.iter().map(String::len).sum::<usize>() <= DEFAULT_MAX_CALL_BYTES);
        }
        assert!(engine_calls(&[]).is_empty());
    }
}
