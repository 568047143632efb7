//! Describe ('D', client): asks for a prepared statement's or a portal's description.

use super::close::Target;
use super::cursor::Cursor;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;

/// A decoded Describe message.
#[derive(Debug, PartialEq, Eq)]
pub struct Describe<'a> {
    /// Statement or portal.
    pub target: Target,
    /// Its name; empty is the unnamed one.
    pub name: &'a [u8],
}

impl<'a> Describe<'a> {
    /// Decodes a Describe frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        let mut cur = Cursor::new(frame.body(), "Describe");
        let kind = cur.u8()?;
        let target = Target::from_byte(kind).ok_or_else(|| {
            ProxyError::ClientProtocol(format!("invalid DESCRIBE message subtype {kind}"))
        })?;
        Ok(Describe {
            target,
            name: cur.cbytes()?,
        })
    }

    /// Encodes this Describe message.
    pub fn encode(&self) -> Frame {
        Frame::new(
            super::client_tag::DESCRIBE,
            &super::target_body(self.target, self.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_statement_is_decoded() {
        let frame = Frame::new(b'D', b"Ss1\0");
        let d = Describe::decode(&frame).unwrap();
        assert_eq!((d.target, d.name), (Target::Statement, &b"s1"[..]));
        assert!(Describe::decode(&Frame::new(b'D', b"Q\0")).is_err());
    }
}
