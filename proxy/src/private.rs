//! The proxy's own queries on a client's upstream session (prefetch, temp table, COPY,
//! version checks). Their responses are consumed here and never reach the client, except
//! asynchronous messages (NOTIFY, ParameterStatus) that belong to the client anyway.

use bytes::{Buf, Bytes};

use crate::error::{ProxyError, Result};
use crate::frame::Frame;
use crate::messages::query::Query;
use crate::messages::ready_for_query::TransactionStatus;
use crate::relay::SessionIo;

/// What a private simple query returned.
#[derive(Debug, Default)]
pub struct PrivateResult {
    /// DataRow values, text format (None = NULL).
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The first ErrorResponse, if the query failed.
    pub error: Option<Frame>,
    /// Upcall NOTICEs seen meanwhile (the caller answers them).
    pub notices: Vec<Frame>,
}

/// Decodes a DataRow body into its column values.
pub fn data_row_values(frame: &Frame) -> Result<Vec<Option<Bytes>>> {
    let bad = || ProxyError::UpstreamProtocol("malformed DataRow".into());
    let mut body = Bytes::copy_from_slice(frame.body());
    if body.remaining() < 2 {
        return Err(bad());
    }
    let n = body.get_i16();
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.remaining() < 4 {
            return Err(bad());
        }
        let len = body.get_i32();
        if len < 0 {
            values.push(None);
        } else {
            let len = len as usize;
            if body.remaining() < len {
                return Err(bad());
            }
            values.push(Some(body.split_to(len)));
        }
    }
    Ok(values)
}

/// Handles one message of a private exchange: forwards what belongs to the client, records
/// the transaction status, and returns true at ReadyForQuery.
fn absorb(io: &mut SessionIo, frame: Frame, result: &mut PrivateResult) -> Result<bool> {
    match frame.tag() {
        b'D' => result.rows.push(data_row_values(&frame)?),
        b'E' if result.error.is_none() => result.error = Some(frame),
        b'N' => result.notices.push(frame),
        // Asynchronous messages are the client's.
        b'A' | b'S' => io.send_client(&frame),
        b'Z' => {
            io.state_mut()
                .set_transaction_status(TransactionStatus::decode(&frame)?);
            return Ok(true);
        }
        _ => {}
    }
    Ok(false)
}

/// Runs `sql` (one or more statements) with the simple protocol on the upstream session.
/// The upstream must be idle (every earlier response relayed).
pub async fn simple_query(io: &mut SessionIo, sql: &str) -> Result<PrivateResult> {
    io.send_private(&Query::encode(sql));
    let mut result = PrivateResult::default();
    loop {
        let frame = io.recv_upstream().await?;
        if frame.tag() == b'G' || frame.tag() == b'H' {
            // A COPY nobody asked for: refuse it so the session stays in step.
            io.send_private(&copy_fail("pgml-proxy: unexpected COPY in a private query"));
            continue;
        }
        if absorb(io, frame, &mut result)? {
            return Ok(result);
        }
    }
}

/// Runs `COPY ... FROM STDIN` with the given CopyData payloads.
pub async fn copy_in(
    io: &mut SessionIo,
    sql: &str,
    chunks: impl IntoIterator<Item = Bytes>,
) -> Result<PrivateResult> {
    io.send_private(&Query::encode(sql));
    let mut result = PrivateResult::default();
    let mut chunks = Some(chunks);
    loop {
        let frame = io.recv_upstream().await?;
        if frame.tag() == b'G' {
            for chunk in chunks.take().into_iter().flatten() {
                io.send_private(&Frame::new(b'd', &chunk));
            }
            io.send_private(&Frame::new(b'c', &[]));
            continue;
        }
        if absorb(io, frame, &mut result)? {
            return Ok(result);
        }
    }
}

fn copy_fail(message: &str) -> Frame {
    let mut body = message.as_bytes().to_vec();
    body.push(0);
    Frame::new(b'f', &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_values_keep_nulls_and_reject_truncation() {
        let mut body = 2i16.to_be_bytes().to_vec();
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let values = data_row_values(&Frame::new(b'D', &body)).unwrap();
        assert_eq!(values, vec![Some(Bytes::from_static(b"hi")), None]);
        body.truncate(7);
        assert!(data_row_values(&Frame::new(b'D', &body)).is_err());
    }
}
