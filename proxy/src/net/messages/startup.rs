//! The untagged packets a client opens a connection with: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest.

use super::cursor::Cursor;
use crate::error::{ProxyError, Result};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_MAJOR_3: u32 = 3;

/// The first packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage: protocol version and parameters (user, database, options, ...).
    Startup(StartupMessage),
    /// SSLRequest.
    SslRequest,
    /// GSSENCRequest.
    GssEncRequest,
    /// CancelRequest, kept as sent (process id and secret key) to be forwarded unchanged.
    Cancel(Vec<u8>),
}

/// A StartupMessage: protocol version and its parameters in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupMessage {
    /// Protocol version (major << 16 | minor).
    pub version: u32,
    /// Parameters in the order the client first named them, each once.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a parameter, replacing an earlier value.
    pub fn set_param(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Encodes the message with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 0];
        out.extend_from_slice(&self.version.to_be_bytes());
        for (k, v) in &self.params {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out.push(0);
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }
}

impl StartupPacket {
    /// Decodes a startup-phase packet body (after its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut cur = Cursor::new(body, "startup");
        let code = cur.i32()? as u32;
        match code {
            SSL_REQUEST => Ok(StartupPacket::SslRequest),
            GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
            CANCEL_REQUEST => Ok(StartupPacket::Cancel(body.to_vec())),
            version if version >> 16 == PROTOCOL_MAJOR_3 => {
                let mut params: Vec<(String, String)> = Vec::new();
                loop {
                    let key = cur.cstr()?;
                    if key.is_empty() {
                        break;
                    }
                    let value = cur.cstr()?;
                    // Postgres applies the parameters in order, so a repeated key's last value
                    // is the one in force (user and database too). Collapsing them here means
                    // the proxy sees the same values as the server, and a parameter the proxy
                    // sets itself cannot be overridden by a second copy from the client.
                    match params.iter_mut().find(|(k, _)| k == key) {
                        Some(entry) => entry.1 = value.to_owned(),
                        None => params.push((key.to_owned(), value.to_owned())),
                    }
                }
                if !cur.rest().is_empty() {
                    return Err(ProxyError::ClientProtocol(
                        "trailing bytes after startup parameters".into(),
                    ));
                }
                Ok(StartupPacket::Startup(StartupMessage { version, params }))
            }
            other => Err(ProxyError::ClientProtocol(format!(
                "unsupported frontend protocol {}.{}",
                other >> 16,
                other & 0xffff
            ))),
        }
    }
}

/// The whole CancelRequest packet (length prefix included) for a cancel body.
pub fn encode_cancel(body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The whole SSLRequest packet.
pub fn encode_ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_round_trips_and_accepts_an_added_parameter() {
        let mut msg = StartupMessage {
            version: 196_608,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "db".into()),
            ],
        };
        msg.set_param("pgml_proxy.session", "abc");
        let encoded = msg.encode();
        match StartupPacket::decode(&encoded[4..]).unwrap() {
            StartupPacket::Startup(back) => {
                assert_eq!(back, msg);
                assert_eq!(back.param("pgml_proxy.session"), Some("abc"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_repeated_parameter_keeps_its_last_value_as_postgres_does() {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend_from_slice(
            b"user\0alice\0application_name\0a\0user\0bob\0application_name\0b\0\0",
        );
        let StartupPacket::Startup(msg) = StartupPacket::decode(&body).unwrap() else {
            panic!("a StartupMessage");
        };
        assert_eq!(
            msg.params,
            vec![
                ("user".to_owned(), "bob".to_owned()),
                ("application_name".to_owned(), "b".to_owned())
            ]
        );
        let mut upstream = msg.clone();
        upstream.set_param("pgml_proxy.session", "proxy");
        let StartupPacket::Startup(sent) = StartupPacket::decode(&upstream.encode()[4..]).unwrap()
        else {
            panic!("a StartupMessage");
        };
        assert_eq!(sent.param("pgml_proxy.session"), Some("proxy"));
    }

    #[test]
    fn special_requests_and_unknown_codes() {
        assert_eq!(
            StartupPacket::decode(&encode_ssl_request()[4..]).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            StartupPacket::decode(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::GssEncRequest
        );
        let err = StartupPacket::decode(&[0, 9, 0, 0]).unwrap_err();
        assert_eq!(err.sqlstate(), "08P01");
        assert!(StartupPacket::decode(&[0, 3, 0, 0, b'u', 0]).is_err());
    }
}
