//! Bind ('B', client): binds parameter values to a prepared statement, creating a portal.
//! Decoded only for statements the proxy rewrote; `statement_name` peeks without decoding.

use bytes::{BufMut, Bytes, BytesMut};

use super::client_tag;
use super::cursor::Cursor;
use crate::error::Result;
use crate::net::frame::Frame;

/// A decoded Bind message; values borrow from the frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal ("" is the unnamed one).
    pub portal: &'a [u8],
    /// Source prepared statement.
    pub statement: &'a [u8],
    /// Parameter format codes as sent (none, one for all, or one per parameter).
    pub formats: Vec<i16>,
    /// Parameter values (None = NULL).
    pub values: Vec<Option<&'a [u8]>>,
    /// Result column format codes, as sent.
    pub result_formats: Vec<i16>,
}

/// An extra parameter value the proxy appends to a Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraValue {
    /// 0 text, 1 binary.
    pub format: i16,
    /// The value (None = NULL).
    pub value: Option<Bytes>,
}

impl<'a> Bind<'a> {
    /// Decodes a Bind frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        let mut cur = Cursor::new(frame.body(), "Bind");
        let portal = cur.cbytes()?;
        let statement = cur.cbytes()?;
        let n = cur.count16()?;
        let formats = (0..n).map(|_| cur.i16()).collect::<Result<Vec<_>>>()?;
        let n = cur.count16()?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let len = cur.i32()?;
            values.push(match usize::try_from(len) {
                Ok(len) => Some(cur.bytes(len)?),
                Err(_) => None,
            });
        }
        let n = cur.count16()?;
        let result_formats = (0..n).map(|_| cur.i16()).collect::<Result<Vec<_>>>()?;
        Ok(Bind {
            portal,
            statement,
            formats,
            values,
            result_formats,
        })
    }

    /// The format code of parameter `i` (0-based), as Postgres reads the format list.
    pub fn format_of(&self, i: usize) -> i16 {
        match self.formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }

    /// The Bind with `extra` appended after the client's values (formats made explicit).
    pub fn encode_with(&self, extra: &[ExtraValue]) -> Frame {
        let total = self.values.len() + extra.len();
        let size: usize = extra
            .iter()
            .map(|e| e.value.as_ref().map_or(0, Bytes::len) + 6)
            .sum();
        let mut body = BytesMut::with_capacity(64 + size);
        body.put_slice(self.portal);
        body.put_u8(0);
        body.put_slice(self.statement);
        body.put_u8(0);
        body.put_u16(total as u16);
        for i in 0..self.values.len() {
            body.put_i16(self.format_of(i));
        }
        for e in extra {
            body.put_i16(e.format);
        }
        body.put_u16(total as u16);
        let values = self
            .values
            .iter()
            .copied()
            .chain(extra.iter().map(|e| e.value.as_deref()));
        for v in values {
            super::put_value(&mut body, v);
        }
        body.put_u16(self.result_formats.len() as u16);
        for f in &self.result_formats {
            body.put_i16(*f);
        }
        Frame::new(client_tag::BIND, &body)
    }

    /// Encodes the Bind unchanged.
    pub fn encode(&self) -> Frame {
        self.encode_with(&[])
    }
}

/// The statement name of a Bind, without decoding the rest (the hot path of every
/// prepared execution).
pub fn statement_name(frame: &Frame) -> Option<&[u8]> {
    statement_name_of(frame.body())
}

/// `statement_name` of a Bind message's body.
pub fn statement_name_of(body: &[u8]) -> Option<&[u8]> {
    let portal_end = body.iter().position(|&b| b == 0)?;
    let rest = body.get(portal_end + 1..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    rest.get(..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_frame() -> Frame {
        let mut body = b"p\0s\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"hello");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        Frame::new(b'B', &body)
    }

    #[test]
    fn bind_round_trips_and_takes_extra_values() {
        let frame = bind_frame();
        let bind = Bind::decode(&frame).unwrap();
        assert_eq!(bind.values, vec![Some(&b"hello"[..]), None]);
        let same = bind.encode();
        let again = Bind::decode(&same).unwrap();
        assert_eq!((again.portal, again.statement), (&b"p"[..], &b"s"[..]));
        assert_eq!(again.values, bind.values);
        assert_eq!(again.formats, vec![0, 0], "formats made explicit");
        assert_eq!(statement_name(&frame), Some(&b"s"[..]));
        let out = bind.encode_with(&[
            ExtraValue {
                format: 1,
                value: Some(Bytes::from_static(&[1, 2])),
            },
            ExtraValue {
                format: 0,
                value: None,
            },
        ]);
        let again = Bind::decode(&out).unwrap();
        assert_eq!(again.formats, vec![0, 0, 1, 0]);
        assert_eq!(
            again.values,
            vec![Some(&b"hello"[..]), None, Some(&[1u8, 2][..]), None]
        );
        assert_eq!(again.result_formats, vec![1]);
    }

    #[test]
    fn truncated_bind_is_a_protocol_error() {
        let frame = bind_frame();
        let short = Frame::new(b'B', &frame.body()[..12]);
        assert_eq!(Bind::decode(&short).unwrap_err().sqlstate(), "08P01");
        assert_eq!(statement_name(&Frame::new(b'B', b"p\0s")), None);
    }
}
