//! RowDescription ('T', server): the columns of a result; built for answers the proxy gives
//! itself (pgml.load_dataset).

use bytes::{BufMut, BytesMut};

use super::server_tag;
use crate::net::frame::Frame;

/// One column of a RowDescription (text format, no source table).
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    /// Column name.
    pub name: &'a str,
    /// Type OID.
    pub type_oid: u32,
    /// Type size (pg_type.typlen; -1 variable).
    pub type_len: i16,
}

/// Encodes a RowDescription of text-format columns.
pub fn encode(columns: &[Column<'_>]) -> Frame {
    let mut body = BytesMut::new();
    body.put_u16(columns.len() as u16);
    for c in columns {
        body.put_slice(c.name.as_bytes());
        body.put_u8(0);
        body.put_u32(0); // table oid
        body.put_i16(0); // column number
        body.put_u32(c.type_oid);
        body.put_i16(c.type_len);
        body.put_i32(-1); // typmod
        body.put_i16(0); // text format
    }
    Frame::new(server_tag::ROW_DESCRIPTION, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_encoded_in_order() {
        let frame = encode(&[Column {
            name: "rows",
            type_oid: 20,
            type_len: 8,
        }]);
        assert_eq!(frame.tag(), b'T');
        assert_eq!(&frame.body()[..2], &[0, 1]);
        assert_eq!(&frame.body()[2..7], b"rows\0");
        assert_eq!(frame.body().len(), 2 + 5 + 18);
    }
}
