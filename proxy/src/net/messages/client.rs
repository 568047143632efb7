//! The typed view of a client message, decoded once by the relay and handed to the session
//! state and the hook. Only what someone reads is decoded: a Bind is peeked for its statement
//! name (it is on the hot path of every prepared execution), everything else stays raw.

use super::bind;
use super::client_tag;
use super::close::Close;
use super::describe::Describe;
use super::parse::Parse;
use super::query::Query;
use crate::error::Result;
use crate::net::frame::Frame;

/// A client message after authentication, as far as the proxy looks into it.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// Simple-protocol query.
    Query(Query<'a>),
    /// Parse (prepare a statement).
    Parse(Parse<'a>),
    /// Bind, with only its source statement's name read.
    Bind {
        /// The prepared statement's name, raw.
        statement: &'a [u8],
    },
    /// Describe; a malformed one stays `Other` for Postgres to report.
    Describe(Describe<'a>),
    /// Close.
    Close(Close<'a>),
    /// Sync: ends an extended-protocol batch (answered by ReadyForQuery).
    Sync,
    /// FunctionCall (answered by ReadyForQuery).
    FunctionCall,
    /// Terminate.
    Terminate,
    /// Anything else, relayed without looking inside.
    Other,
}

impl<'a> ClientMessage<'a> {
    /// Decodes the parts of `frame` the proxy reads.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        Ok(match frame.tag() {
            client_tag::QUERY => ClientMessage::Query(Query::decode(frame)?),
            client_tag::PARSE => ClientMessage::Parse(Parse::decode(frame)?),
            client_tag::BIND => ClientMessage::Bind {
                statement: bind::statement_name(frame).unwrap_or_default(),
            },
            client_tag::DESCRIBE => match Describe::decode(frame) {
                Ok(d) => ClientMessage::Describe(d),
                Err(_) => ClientMessage::Other,
            },
            client_tag::CLOSE => ClientMessage::Close(Close::decode(frame)?),
            client_tag::SYNC => ClientMessage::Sync,
            client_tag::FUNCTION_CALL => ClientMessage::FunctionCall,
            client_tag::TERMINATE => ClientMessage::Terminate,
            _ => ClientMessage::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_decoded_as_far_as_needed() {
        let q = Query::encode("select 1");
        assert!(matches!(
            ClientMessage::decode(&q).unwrap(),
            ClientMessage::Query(Query { sql: b"select 1" })
        ));
        let b = Frame::new(b'B', b"p\0s1\0garbage");
        assert!(matches!(
            ClientMessage::decode(&b).unwrap(),
            ClientMessage::Bind { statement: b"s1" }
        ));
        assert!(matches!(
            ClientMessage::decode(&Frame::new(b'D', b"?")).unwrap(),
            ClientMessage::Other
        ));
        assert!(ClientMessage::decode(&Frame::new(b'C', b"X\0")).is_err());
        assert!(matches!(
            ClientMessage::decode(&Frame::new(b'S', b"")).unwrap(),
            ClientMessage::Sync
        ));
        assert!(client_tag::expects_ready(b'S') && !client_tag::expects_ready(b'H'));
    }
}
