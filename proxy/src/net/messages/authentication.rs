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

/// Whether an Authentication message is an AuthenticationSASL offering SCRAM-SHA-256-PLUS
/// (Postgres offers it only over TLS).
pub fn offers_channel_binding(frame: &Frame) -> Result<bool> {
    if code(frame)? != SASL {
        return Ok(false);
    }
    let mut cur = Cursor::server(&frame.body()[4..], "AuthenticationSASL");
    loop {
        match cur.cstr()? {
            "" => return Ok(false),
            CHANNEL_BINDING_MECHANISM => return Ok(true),
            _ => {}
        }
    }
}

/// The gs2 channel-binding flag of a SASLInitialResponse ('p', client): `n` (client does not
/// support binding), `y` (client supports it but thinks the server does not), `p` (binding
/// used); `None` if the message is not a well-formed SASLInitialResponse.
pub fn gs2_flag(frame: &Frame) -> Option<u8> {
    let mut cur = Cursor::new(frame.body(), "SASLInitialResponse");
    cur.cstr().ok()?;
    let len = cur.i32().ok()?;
    if len <= 0 {
        return None;
    }
    cur.u8().ok()
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
    fn channel_binding_offer_and_the_clients_gs2_flag_are_read() {
        let mut body = SASL.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert!(offers_channel_binding(&Frame::new(b'R', &body)).unwrap());
        let mut body = SASL.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert!(!offers_channel_binding(&Frame::new(b'R', &body)).unwrap());

        let first = b"y,,n=,r=abc";
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first);
        assert_eq!(gs2_flag(&Frame::new(b'p', &body)), Some(b'y'));
        assert_eq!(gs2_flag(&Frame::new(b'p', b"md5abc\0")), None);
    }

    #[test]
    fn other_requests_pass_unchanged() {
        let md5 = Frame::new(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        assert_eq!(without_channel_binding(md5.clone()).unwrap(), md5);
    }
}
