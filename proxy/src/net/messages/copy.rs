//! COPY sub-protocol messages the proxy sends itself: CopyData ('d'), CopyDone ('c') and
//! CopyFail ('f', client only). The same tags from the server are relayed untouched.

use super::client_tag;
use crate::net::frame::Frame;

/// A CopyData message.
pub fn data(bytes: &[u8]) -> Frame {
    Frame::new(client_tag::COPY_DATA, bytes)
}

/// A CopyDone message.
pub fn done() -> Frame {
    Frame::new(client_tag::COPY_DONE, &[])
}

/// A CopyFail message: the server aborts the COPY with `message`.
pub fn fail(message: &str) -> Frame {
    let mut body = message.replace('\0', " ").into_bytes();
    body.push(0);
    Frame::new(client_tag::COPY_FAIL, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fail_is_one_c_string() {
        let f = fail("bad\0input");
        assert_eq!(f.as_bytes(), b"f\0\0\0\x0ebad input\0");
        assert_eq!(done().as_bytes(), b"c\0\0\0\x04");
    }
}
