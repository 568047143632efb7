//! Streaming of huge messages: a DataRow, CopyData or FunctionCallResponse over `STREAM_OVER`
//! bytes is moved from a read buffer to the other side's write queue as its bytes arrive,
//! never buffered whole; memory stays bounded by the queues' high-water mark whatever the
//! message size. No hook or session state needs to look inside those.

use bytes::{Buf, BytesMut};

use super::io::HIGH_WATER;
use crate::error::Result;
use crate::net::frame::{peek_len, Direction};
use crate::net::messages::{client_tag, server_tag};

/// DataRow, CopyData and FunctionCallResponse messages larger than this are streamed instead
/// of buffered whole.
pub const STREAM_OVER: usize = 1024 * 1024;

/// The length of the message at the head of `buf` when it is to be streamed: a DataRow or
/// FunctionCallResponse (from the upstream: `lo_read` through libpq's fast path returns as
/// much as asked for) or CopyData (either way) over `STREAM_OVER` bytes; 0 otherwise.
pub(super) fn streamed_len(buf: &[u8], direction: Direction) -> Result<usize> {
    let Some(total) = peek_len(buf, direction)? else {
        return Ok(0);
    };
    let streamable = match direction {
        Direction::FromClient => buf[0] == client_tag::COPY_DATA,
        Direction::FromUpstream => matches!(
            buf[0],
            server_tag::DATA_ROW | server_tag::COPY_DATA | server_tag::FUNCTION_CALL_RESPONSE
        ),
    };
    Ok(if streamable && total > STREAM_OVER {
        total
    } else {
        0
    })
}

pub(super) fn move_streamed(from: &mut BytesMut, to: &mut BytesMut, remaining: &mut usize) {
    let n = (*remaining)
        .min(from.len())
        .min(HIGH_WATER.saturating_sub(to.len()));
    if n > 0 {
        to.extend_from_slice(&from[..n]);
        from.advance(n);
        *remaining -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tag: u8, total: usize) -> Vec<u8> {
        let mut buf = vec![tag];
        buf.extend_from_slice(&((total - 1) as u32).to_be_bytes());
        buf
    }

    #[test]
    fn only_big_data_rows_copy_data_and_function_results_are_streamed() {
        let big = STREAM_OVER + 1;
        let up = Direction::FromUpstream;
        let client = Direction::FromClient;
        assert_eq!(streamed_len(&header(b'D', big), up).unwrap(), big);
        assert_eq!(streamed_len(&header(b'd', big), up).unwrap(), big);
        assert_eq!(streamed_len(&header(b'd', big), client).unwrap(), big);
        assert_eq!(streamed_len(&header(b'V', big), up).unwrap(), big);
        assert_eq!(streamed_len(&header(b'F', big), client).unwrap(), 0);
        // Messages a hook or the session state reads are always whole.
        assert_eq!(streamed_len(&header(b'E', big), up).unwrap(), 0);
        assert_eq!(streamed_len(&header(b'Q', big), client).unwrap(), 0);
        assert_eq!(streamed_len(&header(b'B', big), client).unwrap(), 0);
        assert_eq!(streamed_len(&header(b'D', STREAM_OVER), up).unwrap(), 0);
        assert_eq!(streamed_len(b"D\0\0", up).unwrap(), 0);
        assert!(streamed_len(&[b'd', 0x7f, 0xff, 0xff, 0xff], client).is_err());
    }

    #[test]
    fn streaming_moves_no_more_than_the_message_or_the_high_water_mark() {
        let mut from = BytesMut::from(&vec![7u8; 3 * HIGH_WATER][..]);
        let mut to = BytesMut::new();
        let mut remaining = 2 * HIGH_WATER;
        move_streamed(&mut from, &mut to, &mut remaining);
        assert_eq!(to.len(), HIGH_WATER);
        assert_eq!(remaining, HIGH_WATER);
        to.clear();
        move_streamed(&mut from, &mut to, &mut remaining);
        assert_eq!(remaining, 0);
        move_streamed(&mut from, &mut to, &mut remaining);
        assert_eq!(to.len(), HIGH_WATER);
        assert_eq!(
            from.len(),
            HIGH_WATER,
            "bytes past the message stay for framing"
        );
    }
}
