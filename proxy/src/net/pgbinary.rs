//! Postgres binary encodings the interception writes itself: `real[]` parameter values.
//! Decoding of the client's Bind values for pgml.embed arguments lives here too.

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

/// The text bytes of a Bind parameter used as a pgml.embed argument (in the session's client
/// encoding). Text format is the text itself; in binary format text/varchar are the text's
/// bytes and jsonb is a version byte 1 + text.
pub fn text_param_bytes(value: &[u8], binary: bool, type_oid: u32) -> &[u8] {
    match value.split_first() {
        Some((1, text)) if binary && type_oid == JSONB_OID => text,
        _ => value,
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
