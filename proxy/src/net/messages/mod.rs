//! Typed views of the protocol messages the proxy looks inside, one module per message kind.
//! Each decodes from a raw `Frame` on demand; everything else is relayed as raw bytes.
//! Tags mean different things per direction (`D` is Describe from a client, DataRow from a server).

pub mod authentication;
pub mod bind;
pub mod client;
pub mod close;
pub mod command_complete;
pub mod copy;
mod cursor;
pub mod data_row;
pub mod describe;
pub mod error_response;
pub mod parameter_description;
pub mod parameter_status;
pub mod parse;
pub mod query;
pub mod ready_for_query;
pub mod row_description;
pub mod startup;

/// Message tags sent by a client (frontend) after the startup packet.
pub mod client_tag {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this tag.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';

    /// Whether the server answers a message with this tag with a ReadyForQuery.
    pub fn expects_ready(tag: u8) -> bool {
        matches!(tag, QUERY | SYNC | FUNCTION_CALL)
    }

    /// Whether a tag is one a frontend may send.
    pub fn is_known(tag: u8) -> bool {
        matches!(
            tag,
            BIND | CLOSE
                | COPY_DATA
                | COPY_DONE
                | COPY_FAIL
                | DESCRIBE
                | EXECUTE
                | FLUSH
                | FUNCTION_CALL
                | PARSE
                | PASSWORD
                | QUERY
                | SYNC
                | TERMINATE
        )
    }
}

/// Message tags sent by a server (backend).
pub mod server_tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Appends a length-prefixed value (Bind parameters, DataRow columns): Int32 length, then the
/// bytes; -1 and nothing for NULL.
/// The body of a Close or Describe: subtype byte, then the name.
fn target_body(target: close::Target, name: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(target.byte());
    body.extend_from_slice(name);
    body.push(0);
    body
}

/// Execute ('E', client): runs a bound portal, `max_rows` rows at most (0 = all).
pub fn execute(portal: &[u8], max_rows: u32) -> crate::net::frame::Frame {
    let mut body = Vec::with_capacity(portal.len() + 5);
    body.extend_from_slice(portal);
    body.push(0);
    body.extend_from_slice(&max_rows.to_be_bytes());
    crate::net::frame::Frame::new(client_tag::EXECUTE, &body)
}

/// Sync ('S', client): ends an extended-protocol batch.
pub fn sync() -> crate::net::frame::Frame {
    crate::net::frame::Frame::new(client_tag::SYNC, &[])
}

pub(crate) fn put_value(buf: &mut bytes::BytesMut, value: Option<&[u8]>) {
    use bytes::BufMut;
    match value {
        Some(bytes) => {
            buf.put_i32(bytes.len() as i32);
            buf.put_slice(bytes);
        }
        None => buf.put_i32(-1),
    }
}
