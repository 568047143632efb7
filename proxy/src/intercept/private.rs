//! The proxy's own queries on a client's upstream session (prefetch, temp table, COPY,
//! version checks). Their responses are consumed here and never reach the client, except
//! asynchronous messages (NOTIFY, ParameterStatus) that belong to the client anyway. An upcall
//! NOTICE raised meanwhile (a view or a function that calls pgml.embed) is answered as soon as
//! it arrives: the server-side code is waiting for it.

use bytes::Bytes;

use super::InterceptHook;
use crate::error::{ProxyError, Result};
use crate::net::frame::Frame;
use crate::net::messages::bind::Bind;
use crate::net::messages::close::{Close, Target};
use crate::net::messages::describe::Describe;
use crate::net::messages::parse::Parse;
use crate::net::messages::query::Query;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::net::messages::{copy, data_row, execute, parameter_description, server_tag, sync};
use crate::session::io::SessionIo;

/// The most row bytes a private query keeps: a prefetch that would need more leaves its
/// statement to the upcall path rather than hold an unbounded result in memory.
pub const MAX_RESULT_BYTES: usize = 256 * 1024 * 1024;

/// What a private simple query returned.
#[derive(Debug, Default)]
pub struct PrivateResult {
    /// DataRow values, text format (None = NULL).
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The first ErrorResponse, if the query failed.
    pub error: Option<Frame>,
    /// True when rows were dropped because they exceeded [`MAX_RESULT_BYTES`].
    pub truncated: bool,
    bytes: usize,
}

/// The proxy's own prepared statement and portal (one at a time; closed before each use).
const PRIVATE_STATEMENT: &[u8] = b"pgml_proxy_private";

/// Parameter values a private statement binds: a client's Bind, with the types its statement
/// has upstream.
pub struct BoundParams<'a> {
    /// Parameter type OIDs for the private statement's Parse.
    pub types: Vec<u32>,
    /// The client's Bind (its formats and values are sent as they are).
    pub bind: &'a Bind<'a>,
}

impl InterceptHook {
    /// Handles one message of a private exchange: answers upcalls, forwards what belongs to
    /// the client, records the transaction status; true at ReadyForQuery.
    async fn absorb(
        &mut self,
        io: &mut SessionIo,
        frame: Frame,
        result: &mut PrivateResult,
    ) -> Result<bool> {
        match frame.tag() {
            server_tag::DATA_ROW => {
                result.bytes = result.bytes.saturating_add(frame.as_bytes().len());
                if result.bytes > MAX_RESULT_BYTES {
                    result.truncated = true;
                    result.rows = Vec::new();
                } else {
                    result.rows.push(data_row::decode(&frame)?);
                }
            }
            server_tag::ERROR_RESPONSE if result.error.is_none() => result.error = Some(frame),
            server_tag::NOTICE_RESPONSE => {
                // An upcall is answered now: the server-side code that raised it is waiting.
                // Other notices of the proxy's own queries are not the client's.
                self.answer_if_upcall(&frame, io).await;
            }
            // Asynchronous messages are the client's.
            server_tag::NOTIFICATION_RESPONSE | server_tag::PARAMETER_STATUS => {
                io.send_client(&frame)
            }
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
    pub(super) async fn private(
        &mut self,
        io: &mut SessionIo,
        sql: impl AsRef<[u8]>,
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
            if self.absorb(io, frame, &mut result).await? {
                return Ok(result);
            }
        }
    }

    /// Runs one statement with the extended protocol as the proxy's own prepared statement,
    /// binding `params` (text results). The upstream must be idle. Unlike a simple query, it
    /// leaves the client's unnamed prepared statement alone.
    pub(super) async fn private_bound(
        &mut self,
        io: &mut SessionIo,
        sql: &[u8],
        params: &BoundParams<'_>,
    ) -> Result<PrivateResult> {
        self.private_extended(io, sql, &params.types, Some(params.bind))
            .await
    }

    async fn private_extended(
        &mut self,
        io: &mut SessionIo,
        sql: &[u8],
        types: &[u32],
        client: Option<&Bind<'_>>,
    ) -> Result<PrivateResult> {
        let close_portal = Close {
            target: Target::Portal,
            name: PRIVATE_STATEMENT,
        }
        .encode();
        let close_statement = Close {
            target: Target::Statement,
            name: PRIVATE_STATEMENT,
        }
        .encode();
        // Closing what does not exist is no error; after a failure (which skips the closing
        // messages at the end) this clears what was left. A portal lives until the end of the
        // transaction unless it is closed.
        io.send_private(&close_portal);
        io.send_private(&close_statement);
        io.send_private(
            &Parse {
                name: PRIVATE_STATEMENT,
                sql,
                param_types: types.to_vec(),
            }
            .encode(),
        );
        let bind = Bind {
            portal: PRIVATE_STATEMENT,
            statement: PRIVATE_STATEMENT,
            formats: client.map_or_else(Vec::new, |c| {
                (0..c.values.len()).map(|i| c.format_of(i)).collect()
            }),
            values: client.map_or_else(Vec::new, |c| c.values.clone()),
            result_formats: Vec::new(),
        };
        io.send_private(&bind.encode());
        io.send_private(&execute(PRIVATE_STATEMENT, 0));
        io.send_private(&close_portal);
        io.send_private(&close_statement);
        io.send_private(&sync());
        let mut result = PrivateResult::default();
        loop {
            let frame = io.recv_upstream().await?;
            if self.absorb(io, frame, &mut result).await? {
                return Ok(result);
            }
        }
    }

    /// The parameter types Postgres assigned to prepared statement `name` (None when it
    /// could not describe it). The upstream must be idle.
    pub(super) async fn private_describe(
        &mut self,
        io: &mut SessionIo,
        name: &[u8],
    ) -> Result<Option<Vec<u32>>> {
        io.send_private(
            &Describe {
                target: Target::Statement,
                name,
            }
            .encode(),
        );
        io.send_private(&sync());
        let mut result = PrivateResult::default();
        let mut types = None;
        loop {
            let frame = io.recv_upstream().await?;
            if frame.tag() == server_tag::PARAMETER_DESCRIPTION {
                types = Some(parameter_description::decode(&frame)?);
                continue;
            }
            if self.absorb(io, frame, &mut result).await? {
                return Ok(types.filter(|_| result.error.is_none()));
            }
        }
    }

    /// Runs `COPY ... FROM STDIN`, sending the chunks `next_chunk` yields (each written out
    /// before the next is asked for, so memory holds one chunk). A chunk source that fails
    /// ends the COPY with CopyFail; its error comes back beside the server's answer.
    pub(super) async fn copy_in(
        &mut self,
        io: &mut SessionIo,
        sql: &str,
        mut next_chunk: impl FnMut() -> Result<Option<Bytes>>,
    ) -> Result<(PrivateResult, Option<ProxyError>)> {
        io.send_private(&Query::encode(sql));
        let mut result = PrivateResult::default();
        let mut local_error = None;
        loop {
            let frame = io.recv_upstream().await?;
            if frame.tag() == server_tag::COPY_IN_RESPONSE {
                loop {
                    match next_chunk() {
                        Ok(Some(chunk)) => {
                            io.send_private(&copy::data(&chunk));
                            io.flush().await?;
                        }
                        Ok(None) => {
                            io.send_private(&copy::done());
                            break;
                        }
                        Err(e) => {
                            io.send_private(&copy::fail(&e.to_string()));
                            local_error = Some(e);
                            break;
                        }
                    }
                }
                continue;
            }
            if self.absorb(io, frame, &mut result).await? {
                return Ok((result, local_error));
            }
        }
    }
}
