//! Query ('Q', client): a simple-protocol query string, possibly several statements.

use super::cursor::Cursor;
use crate::error::Result;
use crate::net::frame::Frame;

/// A decoded simple Query.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// The SQL text as the client sent it, in the session's client encoding.
    pub sql: &'a [u8],
}

impl<'a> Query<'a> {
    /// Decodes a Query frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        let mut cur = Cursor::new(frame.body(), "Query");
        Ok(Query { sql: cur.cbytes()? })
    }

    /// Encodes a Query message for `sql`.
    pub fn encode(sql: impl AsRef<[u8]>) -> Frame {
        let sql = sql.as_ref();
        let mut body = Vec::with_capacity(sql.len() + 1);
        body.extend_from_slice(sql);
        body.push(0);
        Frame::new(super::client_tag::QUERY, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let frame = Query::encode("select 1; select 2");
        assert_eq!(Query::decode(&frame).unwrap().sql, b"select 1; select 2");
        let latin1 = Query::encode(b"select 'caf\xe9'");
        assert_eq!(Query::decode(&latin1).unwrap().sql, b"select 'caf\xe9'");
    }
}
