//! The reading side of pgml.transform_stream: a thread per stream reads the server's events
//! and sends each text piece into a bounded channel. The channel is the back-pressure (a
//! cursor fetched slowly slows the read, and so the server) and the cancellation: when the
//! receiver is gone the next send fails, the thread returns and the connection is dropped.

use std::io::{BufReader, Read};

use tokio::sync::mpsc;

use super::sse::{parse_chunk, EventReader, ReadError};
use super::GenerateTask;
use crate::error::EngineError;

/// Most pieces read ahead of the consumer.
pub(crate) const CHANNEL_PIECES: usize = 64;

/// Largest stream read (a very long answer is a few MB of events).
const MAX_STREAM_BYTES: u64 = 64 * 1024 * 1024;

/// What the reading thread needs besides the body.
pub(crate) struct StreamContext {
    pub task: GenerateTask,
    /// The endpoint's URL, for errors (credentials removed).
    pub url: String,
    /// The per-read timeout, for errors.
    pub timeout: std::time::Duration,
}

/// Reads a whole SSE body into `tx`, one piece per message; ends after `data: [DONE]`, at the
/// end of the body after a finish_reason, or when the receiver is dropped. Anything else is
/// an error sent as the last message.
pub(crate) fn pump(
    body: Box<dyn Read + Send>,
    context: StreamContext,
    tx: mpsc::Sender<Result<String, EngineError>>,
) {
    let mut events = EventReader::new(BufReader::new(body), MAX_STREAM_BYTES);
    let mut finished = false;
    let failure = loop {
        let data = match events.next_data() {
            Ok(Some(data)) => data,
            Ok(None) if finished => return,
            Ok(None) => {
                break "the stream ended before `data: [DONE]` or a finish_reason (the server \
                       stopped or the connection was cut)"
                    .to_string()
            }
            // The answer is complete; a server that then lingers is not our problem.
            Err(_) if finished => return,
            Err(ReadError::Timeout) => {
                let _ = tx.blocking_send(Err(EngineError::GenerateTimeout {
                    url: context.url,
                    timeout: context.timeout,
                }));
                return;
            }
            Err(ReadError::Broken(reason)) => break reason,
        };
        if data.trim() == "[DONE]" {
            return;
        }
        // Keep-alives and empty pieces send nothing, so look for a departed receiver here too.
        if tx.is_closed() {
            return;
        }
        match parse_chunk(context.task, &data) {
            Ok(chunk) => {
                if let Some(piece) = chunk.piece {
                    if tx.blocking_send(Ok(piece)).is_err() {
                        tracing::debug!(url = %context.url, "stream receiver gone; closing");
                        return;
                    }
                }
                finished |= chunk.finished;
            }
            Err(reason) => break reason,
        }
    };
    let _ = tx.blocking_send(Err(EngineError::GenerateResponse {
        url: context.url,
        reason: failure,
    }));
}
