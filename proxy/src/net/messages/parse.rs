//! Parse ('P', client): names a statement, gives its SQL text and declared parameter types.

use super::cursor::Cursor;
use crate::error::Result;
use crate::net::frame::Frame;

/// A decoded Parse message.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty is the unnamed statement.
    pub name: &'a [u8],
    /// The SQL text.
    pub sql: &'a [u8],
    /// Declared parameter type OIDs (0 = let the server infer).
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    /// Decodes a Parse frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        let mut cur = Cursor::new(frame.body(), "Parse");
        let name = cur.cbytes()?;
        let sql = cur.cbytes()?;
        let n = cur.count16()?;
        let mut param_types = Vec::with_capacity(n);
        for _ in 0..n {
            param_types.push(cur.i32()? as u32);
        }
        Ok(Parse {
            name,
            sql,
            param_types,
        })
    }

    /// Encodes this Parse message.
    pub fn encode(&self) -> Frame {
        let mut body = Vec::with_capacity(self.name.len() + self.sql.len() + 4);
        body.extend_from_slice(self.name);
        body.push(0);
        body.extend_from_slice(self.sql);
        body.push(0);
        // Unsigned on the wire; a Parse decoded from the wire never has more than u16::MAX.
        body.extend_from_slice(&(self.param_types.len() as u16).to_be_bytes());
        for oid in &self.param_types {
            body.extend_from_slice(&oid.to_be_bytes());
        }
        Frame::new(super::client_tag::PARSE, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_with_types() {
        let parse = Parse {
            name: b"s1",
            sql: b"select $1::int",
            param_types: vec![23],
        };
        let frame = parse.encode();
        assert_eq!(Parse::decode(&frame).unwrap(), parse);
    }

    #[test]
    fn parse_with_more_than_i16_max_parameters_round_trips() {
        let parse = Parse {
            name: b"",
            sql: b"insert into t values ($1)",
            param_types: vec![23; 40_000],
        };
        let frame = parse.encode();
        assert_eq!(Parse::decode(&frame).unwrap(), parse);
    }

    #[test]
    fn truncated_parse_is_an_error_not_a_panic() {
        let frame = Frame::new(b'P', b"s1\0select 1\0\x00");
        assert!(Parse::decode(&frame).is_err());
    }
}
