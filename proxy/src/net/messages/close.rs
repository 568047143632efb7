//! Close ('C', client): closes a prepared statement or a portal.

use super::cursor::Cursor;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;

/// What a Close (or Describe) targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement ('S').
    Statement,
    /// A portal ('P').
    Portal,
}

impl Target {
    /// The subtype byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }

    /// The target a Close or Describe names by its kind byte (`S` or `P`).
    pub fn from_byte(kind: u8) -> Option<Target> {
        match kind {
            b'S' => Some(Target::Statement),
            b'P' => Some(Target::Portal),
            _ => None,
        }
    }
}

/// A decoded Close message.
#[derive(Debug, PartialEq, Eq)]
pub struct Close<'a> {
    /// Statement or portal.
    pub target: Target,
    /// Its name; empty is the unnamed one.
    pub name: &'a [u8],
}

impl<'a> Close<'a> {
    /// Decodes a Close frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        let mut cur = Cursor::new(frame.body(), "Close");
        let kind = cur.u8()?;
        let target = Target::from_byte(kind).ok_or_else(|| {
            ProxyError::ClientProtocol(format!("invalid Close target {:?}", kind as char))
        })?;
        Ok(Close {
            target,
            name: cur.cbytes()?,
        })
    }

    /// Encodes this Close message.
    pub fn encode(&self) -> Frame {
        Frame::new(
            super::client_tag::CLOSE,
            &super::target_body(self.target, self.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_statement_is_decoded() {
        let frame = Frame::new(b'C', b"Ss1\0");
        let close = Close::decode(&frame).unwrap();
        assert_eq!(close.target, Target::Statement);
        assert_eq!(close.name, b"s1");
        assert!(Close::decode(&Frame::new(b'C', b"Xs1\0")).is_err());
    }
}
