//! ParameterStatus ('S', server): a run-time parameter's name and new value.

use super::cursor::Cursor;
use super::server_tag;
use crate::error::Result;
use crate::net::frame::Frame;

/// A decoded ParameterStatus.
#[derive(Debug, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    /// Parameter name.
    pub name: &'a str,
    /// Its current value.
    pub value: &'a str,
}

impl<'a> ParameterStatus<'a> {
    /// Decodes a ParameterStatus frame.
    pub fn decode(frame: &'a Frame) -> Result<Self> {
        Self::from_body(frame.body())
    }

    /// Decodes a ParameterStatus message's body.
    pub fn from_body(body: &'a [u8]) -> Result<Self> {
        let mut cur = Cursor::server(body, "ParameterStatus");
        Ok(ParameterStatus {
            name: cur.cstr()?,
            value: cur.cstr()?,
        })
    }

    /// Encodes it.
    pub fn encode(&self) -> Frame {
        let mut body = Vec::with_capacity(self.name.len() + self.value.len() + 2);
        body.extend_from_slice(self.name.as_bytes());
        body.push(0);
        body.extend_from_slice(self.value.as_bytes());
        body.push(0);
        Frame::new(server_tag::PARAMETER_STATUS, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_status_round_trips() {
        let status = ParameterStatus {
            name: "standard_conforming_strings",
            value: "off",
        };
        assert_eq!(ParameterStatus::decode(&status.encode()).unwrap(), status);
        assert!(ParameterStatus::decode(&Frame::new(b'S', b"x")).is_err());
    }
}
