//! Framing of the Postgres wire protocol: cut complete messages (tag + length + body) out of
//! a read buffer as raw bytes. Nothing here looks inside a message; see `messages`.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{ProxyError, Result};

/// Postgres refuses messages over 1 GB (PQ_LARGE_MESSAGE_LIMIT); so does the proxy.
pub const MAX_CLIENT_MESSAGE: usize = 0x3fff_ffff;

/// Postgres' own limit on a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Postgres' limit on a client message during authentication (PG_MAX_AUTH_TOKEN_LENGTH): a
/// PasswordMessage, SASLInitialResponse or SASLResponse is never larger, so an unauthenticated
/// client cannot make the proxy buffer more.
pub const MAX_AUTH_MESSAGE: usize = 65_535;

/// One complete protocol message, tag byte included, exactly as it was on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Wraps an encoded message (tag, length, body).
    pub fn from_encoded(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() >= 5);
        Frame { bytes }
    }

    /// Builds a message from its tag and body.
    pub fn new(tag: u8, body: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(5 + body.len());
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        buf.extend_from_slice(body);
        Frame {
            bytes: buf.freeze(),
        }
    }

    /// The message type byte (its meaning depends on the direction).
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The message body, after the tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The message body as shared bytes (no copy): values cut from it keep the frame alive.
    pub fn body_bytes(&self) -> Bytes {
        self.bytes.slice(5..)
    }

    /// The whole message as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A copy in an allocation of its own, for a frame kept beyond its message's handling: a
    /// frame cut from a read buffer shares that buffer's allocation and keeps all of it.
    pub fn unshared(&self) -> Frame {
        Frame {
            bytes: Bytes::copy_from_slice(&self.bytes),
        }
    }

    /// The whole message, consumed.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Which side a buffer is read from: decides the length limit and the error kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Messages sent by the client (frontend).
    FromClient,
    /// Messages sent by the upstream server (backend).
    FromUpstream,
}

/// The total size of the message at the head of `buf`, once its header is there.
pub fn peek_len(buf: &[u8], direction: Direction) -> Result<Option<usize>> {
    let limit = match direction {
        Direction::FromClient => MAX_CLIENT_MESSAGE,
        Direction::FromUpstream => i32::MAX as usize,
    };
    peek_len_within(buf, direction, limit)
}

/// As `peek_len`, with a stricter limit on the length field (which counts itself, not the
/// tag), checked as soon as the header arrives: before any of the body is buffered.
#[inline]
pub fn peek_len_within(buf: &[u8], direction: Direction, limit: usize) -> Result<Option<usize>> {
    // On every message the relay frames: the header read in place, the error out of line.
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if (4..=limit).contains(&len) {
        Ok(Some(len + 1))
    } else {
        Err(invalid_length(tag, len, direction))
    }
}

#[cold]
fn invalid_length(tag: u8, len: usize, direction: Direction) -> ProxyError {
    let what = format!(
        "invalid message length {len} for message type {:?}",
        tag as char
    );
    match direction {
        Direction::FromClient => ProxyError::ClientProtocol(what),
        Direction::FromUpstream => ProxyError::UpstreamProtocol(what),
    }
}

/// Removes and returns the first complete message of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut, direction: Direction) -> Result<Option<Frame>> {
    match peek_len(buf, direction)? {
        Some(total) if buf.len() >= total => Ok(Some(Frame {
            bytes: buf.split_to(total).freeze(),
        })),
        _ => Ok(None),
    }
}

/// Removes and returns a complete untagged startup-phase packet (length + body), if there is one.
pub fn take_startup_packet(buf: &mut BytesMut) -> Result<Option<Bytes>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(ProxyError::ClientProtocol(format!(
            "invalid length of startup packet: {len}"
        )));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    Ok(Some(packet.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_declared_length() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(Frame::new(b'Q', b"select 1\0").as_bytes());
        buf.extend_from_slice(&Frame::new(b'S', b"").as_bytes()[..3]);
        let first = take_frame(&mut buf, Direction::FromClient)
            .unwrap()
            .unwrap();
        assert_eq!(first.tag(), b'Q');
        assert_eq!(first.body(), b"select 1\0");
        assert_eq!(take_frame(&mut buf, Direction::FromClient).unwrap(), None);
        buf.extend_from_slice(&[0, 4]);
        let sync = take_frame(&mut buf, Direction::FromClient)
            .unwrap()
            .unwrap();
        assert_eq!(sync.as_bytes(), b"S\0\0\0\x04");
        assert!(buf.is_empty());
    }

    #[test]
    fn absurd_client_lengths_are_protocol_violations() {
        for len in [0u32, 3, 0x4000_0000, u32::MAX] {
            let mut buf = BytesMut::from(&b"Q"[..]);
            buf.extend_from_slice(&len.to_be_bytes());
            let err = take_frame(&mut buf, Direction::FromClient).unwrap_err();
            assert_eq!(err.sqlstate(), "08P01", "length {len}");
        }
    }

    #[test]
    fn a_stricter_limit_refuses_the_header_alone() {
        let mut header = vec![b'p'];
        header.extend_from_slice(&(MAX_AUTH_MESSAGE as u32 + 1).to_be_bytes());
        let err = peek_len_within(&header, Direction::FromClient, MAX_AUTH_MESSAGE).unwrap_err();
        assert_eq!(err.sqlstate(), "08P01");
        header[1..5].copy_from_slice(&(MAX_AUTH_MESSAGE as u32).to_be_bytes());
        let total = peek_len_within(&header, Direction::FromClient, MAX_AUTH_MESSAGE).unwrap();
        assert_eq!(total, Some(MAX_AUTH_MESSAGE + 1));
    }

    #[test]
    fn startup_packets_outside_postgres_limits_are_rejected() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(take_startup_packet(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 4, 210, 22, 47][..]);
        let packet = take_startup_packet(&mut buf).unwrap().unwrap();
        assert_eq!(&packet[..], &[4, 210, 22, 47]);
    }
}
