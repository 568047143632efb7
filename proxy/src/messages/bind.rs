//! Bind ('B', client): binds parameter values to a prepared statement, creating a portal.
//! Only the header is decoded (names and formats); parameter values stay raw.

use super::cursor::Cursor;
use crate::error::Result;
use crate::frame::Frame;

/// The parts of a Bind message the session tracks.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal; empty is the unnamed portal.
    pub portal: &'a str,
    /// Source prepared statement; empty is the unnamed statement.
    pub statement: &'a str,
    /// Parameter format codes (0 text, 1 binary), as sent.
    pub param_formats: Vec<i16>,
    /// Number of parameter values.
    pub param_count: usize,
    /// Result column format codes, as sent.
    pub result_formats: Vec<i16>,
}

impl<'a> Bind<'a> {
    /// Decodes a Bind frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        let mut cur = Cursor::new(frame.body(), "Bind");
        let portal = cur.cstr()?;
        let statement = cur.cstr()?;
        let n = cur.count16()?;
        let mut param_formats = Vec::with_capacity(n);
        for _ in 0..n {
            param_formats.push(cur.i16()?);
        }
        let param_count = cur.count16()?;
        for _ in 0..param_count {
            let len = cur.i32()?;
            if len > 0 {
                cur.bytes(len as usize)?;
            }
        }
        let n = cur.count16()?;
        let mut result_formats = Vec::with_capacity(n);
        for _ in 0..n {
            result_formats.push(cur.i16()?);
        }
        Ok(Bind {
            portal,
            statement,
            param_formats,
            param_count,
            result_formats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_header_and_formats_are_decoded() {
        let mut body = b"p1\0s1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 7]);
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        let frame = Frame::new(b'B', &body);
        let bind = Bind::decode(&frame).unwrap();
        assert_eq!(bind.portal, "p1");
        assert_eq!(bind.statement, "s1");
        assert_eq!(bind.param_formats, vec![1]);
        assert_eq!(bind.param_count, 2);
        assert_eq!(bind.result_formats, vec![1]);
    }

    #[test]
    fn bind_with_a_value_past_the_end_is_rejected() {
        let mut body = b"\0\0".to_vec();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1000i32.to_be_bytes());
        assert!(Bind::decode(&Frame::new(b'B', &body)).is_err());
    }
}
