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
