//! A bounds-checked reader over a message body, so decoding never panics on client input.

use crate::error::{ProxyError, Result};

/// Reads fields from a message body front to back.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
    from_server: bool,
}

impl<'a> Cursor<'a> {
    /// A reader over a client message (errors are the client's protocol violations).
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor {
            buf,
            what,
            from_server: false,
        }
    }

    /// A reader over a server message (errors are the upstream's protocol violations).
    pub(crate) fn server(buf: &'a [u8], what: &'static str) -> Self {
        Cursor {
            buf,
            what,
            from_server: true,
        }
    }

    fn error(&self, what: String) -> ProxyError {
        if self.from_server {
            ProxyError::UpstreamProtocol(what)
        } else {
            ProxyError::ClientProtocol(what)
        }
    }

    fn short(&self) -> ProxyError {
        self.error(format!("{} message is too short", self.what))
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(format!("{}: unterminated string", self.what)))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| self.error(format!("{}: invalid UTF-8", self.what)))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string as raw bytes (in the session's client encoding).
    pub(crate) fn cbytes(&mut self) -> Result<&'a [u8]> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(format!("{}: unterminated string", self.what)))?;
        let (s, rest) = self.buf.split_at(end);
        self.buf = &rest[1..];
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16> {
        let bytes = self.bytes(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        let bytes = self.bytes(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A count prefix (Int16 on the wire): unsigned, as Postgres reads it (pq_getmsgint(msg,
    /// 2)), so a Parse or Bind with 32,768 to 65,535 parameters is valid.
    pub(crate) fn count16(&mut self) -> Result<usize> {
        let bytes = self.bytes(2)?;
        Ok(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_unsigned_sixteen_bit() {
        let mut cur = Cursor::new(&[0x9c, 0x40, 0xff, 0xff, 0x00], "Parse");
        assert_eq!(cur.count16().unwrap(), 40_000);
        assert_eq!(cur.count16().unwrap(), 65_535);
        assert!(cur.count16().is_err());
    }
}
