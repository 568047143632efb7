//! The proxy's own queries on a client's upstream session (prefetch, temp table, COPY,
//! version checks). Their responses are consumed here and never reach the client, except
//! asynchronous messages (NOTIFY, ParameterStatus) that belong to the client anyway.

use bytes::Bytes;

use crate::error::Result;
use crate::net::frame::Frame;
use crate::net::messages::query::Query;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::{copy, data_row, server_tag};
use crate::session::io::SessionIo;

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

/// Handles a NOTICE as it arrives, while the query still runs; true when it took it.
pub type NoticeHandler<'a> = &'a (dyn Fn(&Frame) -> bool + Sync);

/// Handles one message of a private exchange: forwards what belongs to the client, records
/// the transaction status, and returns true at ReadyForQuery.
fn absorb(
    io: &mut SessionIo,
    frame: Frame,
    result: &mut PrivateResult,
    on_notice: NoticeHandler<'_>,
) -> Result<bool> {
    match frame.tag() {
        server_tag::DATA_ROW => result.rows.push(data_row::decode(&frame)?),
        server_tag::ERROR_RESPONSE if result.error.is_none() => result.error = Some(frame),
        server_tag::NOTICE_RESPONSE if on_notice(&frame) => {}
        server_tag::NOTICE_RESPONSE => result.notices.push(frame),
        // Asynchronous messages are the client's.
        server_tag::NOTIFICATION_RESPONSE | server_tag::PARAMETER_STATUS => io.send_client(&frame),
        server_tag::READY_FOR_QUERY => {
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
    simple_query_answering(io, sql, &|_| false).await
}

/// `simple_query`, handing each NOTICE to `on_notice` as it arrives (an upcall raised by the
/// query itself must be answered before the query can end).
pub async fn simple_query_answering(
    io: &mut SessionIo,
    sql: &str,
    on_notice: NoticeHandler<'_>,
) -> Result<PrivateResult> {
    io.send_private(&Query::encode(sql));
    let mut result = PrivateResult::default();
    loop {
        let frame = io.recv_upstream().await?;
        if matches!(
            frame.tag(),
            server_tag::COPY_IN_RESPONSE | server_tag::COPY_OUT_RESPONSE
        ) {
            // A COPY nobody asked for: refuse it so the session stays in step.
            io.send_private(&copy::fail(
                "pgml-proxy: unexpected COPY in a private query",
            ));
            continue;
        }
        if absorb(io, frame, &mut result, on_notice)? {
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
        if frame.tag() == server_tag::COPY_IN_RESPONSE {
            for chunk in chunks.take().into_iter().flatten() {
                io.send_private(&copy::data(&chunk));
            }
            io.send_private(&copy::done());
            continue;
        }
        if absorb(io, frame, &mut result, &|_| false)? {
            return Ok(result);
        }
    }
}
