//! DataRow ('D', server): one row of a result, each column a length-prefixed value.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::server_tag;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;

/// Decodes a DataRow into its column values (None = NULL).
pub fn decode(frame: &Frame) -> Result<Vec<Option<Bytes>>> {
    let bad = || ProxyError::UpstreamProtocol("malformed DataRow".into());
    let mut body = frame.body_bytes();
    if body.remaining() < 2 {
        return Err(bad());
    }
    let n = body.get_u16();
    let mut values = Vec::with_capacity(usize::from(n).min(body.remaining() / 4));
    for _ in 0..n {
        if body.remaining() < 4 {
            return Err(bad());
        }
        let len = body.get_i32();
        match usize::try_from(len) {
            Err(_) => values.push(None),
            Ok(len) if body.remaining() >= len => values.push(Some(body.split_to(len))),
            Ok(_) => return Err(bad()),
        }
    }
    Ok(values)
}

/// Encodes a DataRow from text or binary values (None = NULL).
pub fn encode(values: &[Option<&[u8]>]) -> Frame {
    let size: usize = values.iter().map(|v| 4 + v.map_or(0, <[u8]>::len)).sum();
    let mut body = BytesMut::with_capacity(2 + size);
    body.put_u16(values.len() as u16);
    for v in values {
        super::put_value(&mut body, *v);
    }
    Frame::new(server_tag::DATA_ROW, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_values_keep_nulls_and_reject_truncation() {
        let frame = encode(&[Some(b"hi"), None]);
        let values = decode(&frame).unwrap();
        assert_eq!(values, vec![Some(Bytes::from_static(b"hi")), None]);
        let short = Frame::new(b'D', &frame.body()[..7]);
        assert!(decode(&short).is_err());
    }
}
