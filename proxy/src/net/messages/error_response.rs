//! ErrorResponse ('E') and NoticeResponse ('N'), server: building the errors the proxy itself
//! reports, and reading the fields (SQLSTATE, message) of the ones the server sends.

use crate::error::{ProxyError, UpstreamError};
use crate::net::encoding::ClientEncoding;
use crate::net::frame::Frame;

/// The fields of an ErrorResponse or NoticeResponse, by their one-byte codes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields {
    fields: Vec<(u8, String)>,
}

impl Fields {
    /// Decodes an 'E' or 'N' frame whose text is in `encoding` (the session's
    /// client_encoding); text that cannot be read exactly is read as lossy UTF-8.
    pub fn decode_in(frame: &Frame, encoding: ClientEncoding) -> Self {
        let mut fields = Self::decode(frame);
        if !encoding.is_utf8() {
            let raw = Self::raw(frame);
            for ((_, text), (_, bytes)) in fields.fields.iter_mut().zip(raw) {
                if let Some(exact) = encoding.decode(bytes) {
                    *text = exact.into_owned();
                }
            }
        }
        fields
    }

    fn raw(frame: &Frame) -> Vec<(u8, &[u8])> {
        let mut fields = Vec::new();
        let mut rest = frame.body();
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let Some(end) = tail.iter().position(|&b| b == 0) else {
                break;
            };
            fields.push((code, &tail[..end]));
            rest = &tail[end + 1..];
        }
        fields
    }

    /// Decodes an 'E' or 'N' frame; malformed trailing bytes end the field list.
    pub fn decode(frame: &Frame) -> Self {
        let fields = Self::raw(frame)
            .into_iter()
            .map(|(code, bytes)| (code, String::from_utf8_lossy(bytes).into_owned()))
            .collect();
        Fields { fields }
    }

    /// The value of field `code` ('C' SQLSTATE, 'M' message, 'S' severity, ...).
    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE ('C').
    pub fn sqlstate(&self) -> Option<&str> {
        self.get(b'C')
    }

    /// The primary message ('M').
    pub fn message(&self) -> Option<&str> {
        self.get(b'M')
    }

    /// The error these fields describe, as the proxy passes it on.
    pub fn to_upstream_error(&self) -> UpstreamError {
        UpstreamError {
            sqlstate: self.sqlstate().unwrap_or("XX000").to_owned(),
            message: self.message().unwrap_or("upstream error").to_owned(),
            detail: self.get(b'D').map(str::to_owned),
        }
    }
}

/// Encodes an ErrorResponse with the given severity, SQLSTATE and message.
pub fn encode(severity: &str, sqlstate: &str, message: &str) -> Frame {
    encode_with_detail(severity, sqlstate, message, None)
}

/// Encodes an ErrorResponse with an optional DETAIL field. NUL bytes (which would end a
/// field early) become spaces.
pub fn encode_with_detail(
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
) -> Frame {
    let mut body = Vec::with_capacity(message.len() + detail.map_or(0, str::len) + 32);
    let fields = [
        (b'S', Some(severity)),
        (b'V', Some(severity)),
        (b'C', Some(sqlstate)),
        (b'M', Some(message)),
        (b'D', detail),
    ];
    for (code, value) in fields {
        if let Some(value) = value {
            body.push(code);
            body.extend(value.bytes().map(|b| if b == 0 { b' ' } else { b }));
            body.push(0);
        }
    }
    body.push(0);
    Frame::new(super::server_tag::ERROR_RESPONSE, &body)
}

/// The fields of `err` (SQLSTATE, message, detail) at `severity`, as an ErrorResponse body
/// (also the body of a NoticeResponse with severity WARNING).
pub fn of_error(severity: &str, err: &ProxyError) -> Frame {
    encode_with_detail(
        severity,
        err.sqlstate(),
        &err.to_string(),
        err.detail().as_deref(),
    )
}

/// The ERROR ErrorResponse a client sees when `err` fails its statement.
pub fn error(err: &ProxyError) -> Frame {
    of_error("ERROR", err)
}

/// The FATAL ErrorResponse a client gets for `err` before the proxy closes its connection.
pub fn fatal(err: &ProxyError) -> Frame {
    of_error("FATAL", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_error_carries_sqlstate_and_message() {
        let frame = fatal(&ProxyError::TooManyConnections);
        assert_eq!(frame.tag(), b'E');
        let fields = Fields::decode(&frame);
        assert_eq!(fields.sqlstate(), Some("53300"));
        assert_eq!(fields.get(b'S'), Some("FATAL"));
        assert_eq!(fields.message(), Some("sorry, too many clients already"));
    }
}
