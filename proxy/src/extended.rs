//! Extended-protocol rewriting for path 1: a Parse whose pgml.embed calls have constant
//! arguments is rewritten with one extra `real[]` parameter per call; each Bind gets the
//! computed values appended; ParameterDescription hides the extra parameters again.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgml_rewriter::ConstantPlan;

use crate::embedding::EmbedFailure;
use crate::error::{ProxyError, Result};
use crate::frame::Frame;
use crate::pgbinary::{decode_text_param, encode_real_array};

/// A prepared statement whose Parse the proxy rewrote.
#[derive(Debug, Clone)]
pub struct RewrittenStatement {
    /// The plan (its calls and how the client's parameters feed them).
    pub plan: ConstantPlan,
    /// How many parameters the client sees (and binds).
    pub client_params: usize,
    /// Parameter types declared upstream (the client's first, then one `real[]` per call).
    pub param_types: Vec<u32>,
}

/// A value the proxy appends to a Bind.
#[derive(Debug, Clone)]
pub enum ExtraParam {
    /// The embedding.
    Vector(Arc<Vec<f32>>),
    /// SQL NULL (STRICT: a NULL argument).
    Null,
    /// The failure marker text, which Postgres rejects as a `real[]`.
    Failure(String),
}

/// A Bind message with its parameter values.
#[derive(Debug)]
pub struct BindValues {
    /// Destination portal.
    pub portal: String,
    /// Source statement.
    pub statement: String,
    /// Parameter format codes as sent (0, 1 or one per parameter).
    pub formats: Vec<i16>,
    /// Parameter values (None = NULL).
    pub values: Vec<Option<Vec<u8>>>,
    /// Result format codes, raw.
    pub result_formats: Vec<i16>,
}

fn bad(what: &str) -> ProxyError {
    ProxyError::ClientProtocol(format!("malformed Bind message: {what}"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("unterminated string"))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| bad("invalid UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s.to_owned())
    }
    fn count(&mut self) -> Result<usize> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| bad("negative count"))
    }
}

impl BindValues {
    /// Decodes a Bind frame.
    pub fn decode(frame: &Frame) -> Result<Self> {
        let mut r = Reader { buf: frame.body() };
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let n = r.count()?;
        let formats = (0..n).map(|_| r.i16()).collect::<Result<Vec<_>>>()?;
        let n = r.count()?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.i32()?;
            values.push(if len < 0 {
                None
            } else {
                Some(r.take(len as usize)?.to_vec())
            });
        }
        let n = r.count()?;
        let result_formats = (0..n).map(|_| r.i16()).collect::<Result<Vec<_>>>()?;
        Ok(BindValues {
            portal,
            statement,
            formats,
            values,
            result_formats,
        })
    }

    fn format_of(&self, i: usize) -> i16 {
        match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => self.formats.get(i).copied().unwrap_or(0),
        }
    }

    /// Parameter `$n` (1-based) as text, for a pgml.embed argument.
    pub fn text_param(
        &self,
        n: usize,
        types: &[u32],
    ) -> std::result::Result<Option<String>, EmbedFailure> {
        let Some(value) = n.checked_sub(1).and_then(|i| self.values.get(i)) else {
            return Err(EmbedFailure {
                sqlstate: "42P02".into(),
                message: format!("there is no parameter ${n}"),
                detail: None,
            });
        };
        let Some(bytes) = value else { return Ok(None) };
        let oid = types.get(n - 1).copied().unwrap_or(0);
        decode_text_param(bytes, self.format_of(n - 1) == 1, oid)
            .map(Some)
            .map_err(|_| EmbedFailure {
                sqlstate: "22021".into(),
                message: "invalid byte sequence for encoding \"UTF8\"".into(),
                detail: Some(format!("pgml.embed argument ${n} is not valid UTF-8 text")),
            })
    }

    /// The Bind to send upstream: the client's values, then `extra` (binary `real[]`, or
    /// text for a failure marker).
    pub fn with_extra_params(&self, extra: &[ExtraParam]) -> Frame {
        let total = self.values.len() + extra.len();
        let mut body = BytesMut::with_capacity(64 + extra.len() * 1600);
        body.put_slice(self.portal.as_bytes());
        body.put_u8(0);
        body.put_slice(self.statement.as_bytes());
        body.put_u8(0);
        body.put_i16(total as i16);
        for i in 0..self.values.len() {
            body.put_i16(self.format_of(i));
        }
        for e in extra {
            body.put_i16(if matches!(e, ExtraParam::Failure(_)) {
                0
            } else {
                1
            });
        }
        body.put_i16(total as i16);
        for v in &self.values {
            match v {
                Some(bytes) => {
                    body.put_i32(bytes.len() as i32);
                    body.put_slice(bytes);
                }
                None => body.put_i32(-1),
            }
        }
        for e in extra {
            match e {
                ExtraParam::Vector(v) => {
                    let array = encode_real_array(v);
                    body.put_i32(array.len() as i32);
                    body.put_slice(&array);
                }
                ExtraParam::Null => body.put_i32(-1),
                ExtraParam::Failure(marker) => {
                    body.put_i32(marker.len() as i32);
                    body.put_slice(marker.as_bytes());
                }
            }
        }
        body.put_i16(self.result_formats.len() as i16);
        for f in &self.result_formats {
            body.put_i16(*f);
        }
        Frame::new(b'B', &body)
    }
}

/// The statement name of a Bind, without decoding the rest.
pub fn bind_statement(frame: &Frame) -> Option<&str> {
    let body = frame.body();
    let portal_end = body.iter().position(|&b| b == 0)?;
    let rest = &body[portal_end + 1..];
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// ParameterDescription ('t') cut to the client's first `n` parameters.
pub fn truncate_parameter_description(frame: &Frame, n: usize) -> Result<Frame> {
    let body = frame.body();
    if body.len() < 2 {
        return Err(ProxyError::UpstreamProtocol(
            "malformed ParameterDescription".into(),
        ));
    }
    let count = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
    let keep = n.min(count);
    if body.len() < 2 + count * 4 {
        return Err(ProxyError::UpstreamProtocol(
            "malformed ParameterDescription".into(),
        ));
    }
    let mut out = Vec::with_capacity(2 + keep * 4);
    out.extend_from_slice(&(keep as i16).to_be_bytes());
    out.extend_from_slice(&body[2..2 + keep * 4]);
    Ok(Frame::new(b't', &out))
}

/// The (kind, name) a Describe or Close names: kind `S` statement, `P` portal.
fn target(frame: &Frame) -> Option<(u8, String)> {
    let (&kind, rest) = frame.body().split_first()?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some((kind, String::from_utf8_lossy(&rest[..end]).into_owned()))
}

/// What a Describe message describes.
pub fn describe_target(frame: &Frame) -> Option<(u8, String)> {
    target(frame)
}

/// What a Close message closes.
pub fn close_target(frame: &Frame) -> Option<(u8, String)> {
    target(frame)
}

/// A ParameterStatus message's (name, value).
pub fn parameter_status(frame: &Frame) -> Option<(&str, &str)> {
    let body = frame.body();
    let end = body.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&body[..end]).ok()?;
    let rest = &body[end + 1..];
    let vend = rest.iter().position(|&b| b == 0)?;
    let value = std::str::from_utf8(&rest[..vend]).ok()?;
    Some((name, value))
}

/// An ERROR ErrorResponse for a failure.
pub fn error_frame(failure: &EmbedFailure) -> Frame {
    let mut body = Vec::with_capacity(failure.message.len() + 64);
    let mut field = |code: u8, value: &str| {
        body.push(code);
        body.extend_from_slice(value.replace('\0', " ").as_bytes());
        body.push(0);
    };
    field(b'S', "ERROR");
    field(b'V', "ERROR");
    field(b'C', &failure.sqlstate);
    field(b'M', &failure.message);
    if let Some(detail) = &failure.detail {
        field(b'D', detail);
    }
    body.push(0);
    Frame::new(b'E', &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_frame() -> Frame {
        let mut body = b"p\0s\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"hello");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        Frame::new(b'B', &body)
    }

    #[test]
    fn bind_values_round_trip_with_extra_parameters() {
        let bind = BindValues::decode(&bind_frame()).unwrap();
        assert_eq!(bind.values, vec![Some(b"hello".to_vec()), None]);
        assert_eq!(
            bind.text_param(1, &[25, 25]).unwrap().as_deref(),
            Some("hello")
        );
        assert_eq!(bind.text_param(2, &[25, 25]).unwrap(), None);
        assert!(bind.text_param(3, &[]).is_err());
        let out = bind.with_extra_params(&[
            ExtraParam::Vector(Arc::new(vec![1.0, 2.0])),
            ExtraParam::Failure("pgml-proxy-error:1".into()),
        ]);
        let again = BindValues::decode(&out).unwrap();
        assert_eq!(again.formats, vec![0, 0, 1, 0]);
        assert_eq!(again.values.len(), 4);
        assert_eq!(
            again.values[2].as_deref(),
            Some(&encode_real_array(&[1.0, 2.0])[..])
        );
        assert_eq!(again.values[3].as_deref(), Some(&b"pgml-proxy-error:1"[..]));
        assert_eq!(again.result_formats, vec![1]);
    }

    #[test]
    fn parameter_description_hides_the_proxy_parameters() {
        let mut body = 3i16.to_be_bytes().to_vec();
        for oid in [25u32, 3802, 1021] {
            body.extend_from_slice(&oid.to_be_bytes());
        }
        let cut = truncate_parameter_description(&Frame::new(b't', &body), 2).unwrap();
        assert_eq!(cut.body().len(), 2 + 8);
        assert_eq!(&cut.body()[..2], &2i16.to_be_bytes());
    }

    #[test]
    fn truncated_bind_is_a_protocol_error() {
        let frame = bind_frame();
        let short = Frame::new(b'B', &frame.body()[..12]);
        assert!(BindValues::decode(&short).is_err());
    }
}
