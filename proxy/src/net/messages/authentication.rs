//! Authentication ('R', server): the request codes of the auth exchange, and the one rewrite
//! the proxy makes to it: SCRAM-SHA-256-PLUS is removed from the SASL mechanisms offered,
//! because channel binding cannot survive a hop that terminates TLS.

use super::cursor::Cursor;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;

/// AuthenticationOk.
pub const OK: i32 = 0;
/// AuthenticationSASL: the body lists mechanisms.
pub const SASL: i32 = 10;

/// The mechanism the proxy hides from clients.
const CHANNEL_BINDING_MECHANISM: &str = "SCRAM-SHA-256-PLUS";

/// The request code of an Authentication message.
pub fn code(frame: &Frame) -> Result<i32> {
    let body = frame.body();
    if body.len() < 4 {
        return Err(ProxyError::UpstreamProtocol(
            "Authentication message is too short".into(),
        ));
    }
    Ok(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// AuthenticationSASL without SCRAM-SHA-256-PLUS; other messages are returned unchanged.
pub fn without_channel_binding(frame: Frame) -> Result<Frame> {
    if code(&frame)? != SASL {
        return Ok(frame);
    }
    let mut cur = Cursor::new(&frame.body()[4..], "AuthenticationSASL");
    let mut body = SASL.to_be_bytes().to_vec();
    loop {
        let mechanism = cur
            .cstr()
            .map_err(|e| ProxyError::UpstreamProtocol(e.to_string()))?;
        if mechanism.is_empty() {
            break;
        }
        if mechanism != CHANNEL_BINDING_MECHANISM {
            body.extend_from_slice(mechanism.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    Ok(Frame::new(frame.tag(), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_plus_is_removed_and_scram_kept() {
        let mut body = SASL.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let out = without_channel_binding(Frame::new(b'R', &body)).unwrap();
        let mut want = SASL.to_be_bytes().to_vec();
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(out.body(), &want[..]);
    }

    #[test]
    fn other_requests_pass_unchanged() {
        let md5 = Frame::new(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        assert_eq!(without_channel_binding(md5.clone()).unwrap(), md5);
    }
}
