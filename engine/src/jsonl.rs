//! JSON lines in, vectors out: one JSON string per input line becomes one JSON array of
//! floats per output line, in order. Backs `pgml-proxy embed`; reads in chunks so the
//! batcher sees many texts at once.

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::{Embedder, Engine};
use crate::error::EngineError;

/// Texts embedded per round trip to the engine.
const CHUNK: usize = 256;

/// Embeds every line of `reader` with `model` and `kwargs`, writing one line per input to
/// `writer`; returns how many texts were embedded.
pub async fn embed_json_lines<R, W>(
    engine: &Engine,
    model: &str,
    kwargs: &Value,
    reader: R,
    mut writer: W,
) -> Result<usize, EngineError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = reader.lines();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut line_no = 0;
    let mut done = 0;
    loop {
        let line = lines.next_line().await?;
        if let Some(line) = &line {
            line_no += 1;
            let text: String = serde_json::from_str(line).map_err(|e| EngineError::JsonLines {
                line: line_no,
                reason: format!("expected one JSON string per line: {e}"),
            })?;
            chunk.push(text);
        }
        if chunk.len() == CHUNK || (line.is_none() && !chunk.is_empty()) {
            let vectors = engine
                .embed(model, std::mem::take(&mut chunk), kwargs)
                .await?;
            let mut out = String::new();
            for vector in &vectors {
                let json = serde_json::to_string(vector).map_err(|e| EngineError::JsonLines {
                    line: line_no,
                    reason: e.to_string(),
                })?;
                out.push_str(&json);
                out.push('\n');
            }
            writer.write_all(out.as_bytes()).await?;
            done += vectors.len();
        }
        if line.is_none() {
            writer.flush().await?;
            return Ok(done);
        }
    }
}
