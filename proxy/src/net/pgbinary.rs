//! Postgres binary encodings the interception writes itself: `real[]` parameter values and
//! the binary COPY stream that fills the session's prefetch table. Decoding of the client's
//! Bind values for pgml.embed arguments lives here too.

use bytes::{BufMut, Bytes, BytesMut};

/// OID of `float4` (`real`).
pub const FLOAT4_OID: u32 = 700;
/// OID of `jsonb`.
pub const JSONB_OID: u32 = 3802;

/// The header of a one-dimensional array without NULLs, lower bound 1, in the binary format.
fn put_array_header(out: &mut BytesMut, element_oid: u32, len: usize) {
    out.put_i32(1); // ndim
    out.put_i32(0); // has nulls
    out.put_u32(element_oid);
    out.put_i32(len as i32);
    out.put_i32(1); // lower bound
}

/// `real[]` in the binary array format: one dimension, no NULLs, lower bound 1.
pub fn encode_real_array(values: &[f32]) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + values.len() * 8);
    put_array_header(&mut out, FLOAT4_OID, values.len());
    for v in values {
        out.put_i32(4);
        out.put_f32(*v);
    }
    out.freeze()
}

/// OID of `text`.
pub const TEXT_OID: u32 = 25;

/// `text[]` in the binary array format (one dimension, no NULLs, lower bound 1) from text
/// values already in the session's client encoding.
fn put_text_array(out: &mut BytesMut, values: &[Vec<u8>]) {
    let len: usize = 20 + values.iter().map(|v| 4 + v.len()).sum::<usize>();
    out.put_i32(len as i32);
    put_array_header(out, TEXT_OID, values.len());
    for v in values {
        out.put_i32(v.len() as i32);
        out.put_slice(v);
    }
}

/// The value of one prefetch row: an embedding, or the chunks of a pgml.chunk call.
pub enum PrefetchValue<'a> {
    Embedding(&'a [f32]),
    /// The chunks in order, each in the session's client encoding.
    Chunks(&'a [Vec<u8>]),
}

/// The text bytes of a Bind parameter used as a pgml.embed argument (in the session's client
/// encoding). Text format is the text itself; in binary format text/varchar are the text's
/// bytes and jsonb is a version byte 1 + text.
pub fn text_param_bytes(value: &[u8], binary: bool, type_oid: u32) -> &[u8] {
    match value.split_first() {
        Some((1, text)) if binary && type_oid == JSONB_OID => text,
        _ => value,
    }
}

/// Builds the binary COPY stream for `pgml_prefetch (transformer text, input text, kwargs
/// jsonb, embedding real[], chunks text[])` (pgml.chunk rows: the splitter as transformer).
pub struct PrefetchCopy {
    buf: BytesMut,
}

impl PrefetchCopy {
    /// Starts a stream (writes the binary COPY header).
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        Self { buf }
    }

    /// Appends one row.
    /// Text values are in the session's client encoding (Postgres converts them on receipt).
    pub fn row(
        &mut self,
        transformer: &[u8],
        input: &[u8],
        kwargs_json: &[u8],
        value: PrefetchValue<'_>,
    ) {
        self.buf.put_i16(5);
        self.buf.put_i32(transformer.len() as i32);
        self.buf.put_slice(transformer);
        self.buf.put_i32(input.len() as i32);
        self.buf.put_slice(input);
        self.buf.put_i32(kwargs_json.len() as i32 + 1);
        self.buf.put_u8(1); // jsonb binary version
        self.buf.put_slice(kwargs_json);
        match value {
            PrefetchValue::Embedding(embedding) => {
                let array = encode_real_array(embedding);
                self.buf.put_i32(array.len() as i32);
                self.buf.put_slice(&array);
                self.buf.put_i32(-1); // chunks NULL
            }
            PrefetchValue::Chunks(chunks) => {
                self.buf.put_i32(-1); // embedding NULL
                put_text_array(&mut self.buf, chunks);
            }
        }
    }

    /// Bytes buffered so far (callers flush in chunks to bound memory).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Takes what is buffered, leaving the stream open for more rows.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Ends the stream (trailer) and returns the remaining bytes.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_array_layout_is_postgres_binary_format() {
        let b = encode_real_array(&[1.0, -2.5]);
        assert_eq!(&b[0..4], &1i32.to_be_bytes());
        assert_eq!(&b[8..12], &700u32.to_be_bytes());
        assert_eq!(&b[12..16], &2i32.to_be_bytes());
        assert_eq!(&b[20..24], &4i32.to_be_bytes());
        assert_eq!(&b[24..28], &1.0f32.to_be_bytes());
        assert_eq!(&b[32..36], &(-2.5f32).to_be_bytes());
        assert_eq!(b.len(), 36);
    }

    #[test]
    fn jsonb_binary_param_loses_its_version_byte() {
        assert_eq!(
            text_param_bytes(b"\x01{\"a\":1}", true, JSONB_OID),
            b"{\"a\":1}"
        );
        assert_eq!(text_param_bytes(b"\x01{}", false, JSONB_OID), b"\x01{}");
        assert_eq!(text_param_bytes(b"\x01x", true, 25), b"\x01x");
    }
}
