//! Server-sent events as OpenAI streams them: `data: {...}` lines, events separated by a
//! blank line, `:` comments as keep-alives, `data: [DONE]` at the end. Reads events from any
//! `BufRead` with bounded lines and a bounded total, and says what each chunk carries
//! (`Chunk`). No threads or channels here; `stream.rs` drives it.

use std::io::{BufRead, Read};

use serde_json::Value;

use super::GenerateTask;
use crate::remote_http::is_timeout_kind;

/// Longest line accepted (one chunk's JSON is a few hundred bytes).
const MAX_LINE_BYTES: u64 = 1024 * 1024;

/// Why reading the stream failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// No bytes for the socket's read timeout.
    Timeout,
    /// The connection failed, or the stream broke a limit.
    Broken(String),
}

/// Reads the `data` of one event at a time.
pub(crate) struct EventReader<R> {
    reader: R,
    line: Vec<u8>,
    /// Bytes left of the whole stream's budget.
    left: u64,
}

impl<R: BufRead> EventReader<R> {
    /// Events from `reader`, at most `max_bytes` in all.
    pub fn new(reader: R, max_bytes: u64) -> Self {
        EventReader {
            reader,
            line: Vec::new(),
            left: max_bytes,
        }
    }

    /// The next event's data (its `data:` lines joined by `\n`), or None at the end of the
    /// stream. Events without data (comments, `event:`/`id:` lines only) are skipped.
    pub fn next_data(&mut self) -> Result<Option<String>, ReadError> {
        let mut data: Option<String> = None;
        loop {
            self.line.clear();
            let limit = MAX_LINE_BYTES.min(self.left);
            if limit == 0 {
                return Err(ReadError::Broken(
                    "the stream exceeds the size limit".into(),
                ));
            }
            let read = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| {
                    if is_timeout_kind(e.kind()) {
                        ReadError::Timeout
                    } else {
                        ReadError::Broken(format!("reading the stream failed: {e}"))
                    }
                })?;
            self.left -= read as u64;
            if read == 0 {
                // End of the stream; an event not closed by a blank line still counts.
                return Ok(data);
            }
            if !self.line.ends_with(b"\n") && read as u64 == limit {
                return Err(ReadError::Broken(if self.left == 0 {
                    "the stream exceeds the size limit".into()
                } else {
                    format!("a stream line exceeds {MAX_LINE_BYTES} bytes")
                }));
            }
            let text = String::from_utf8_lossy(&self.line);
            let line = text.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if data.is_some() {
                    return Ok(data);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            if field == "data" {
                match &mut data {
                    Some(joined) => {
                        joined.push('\n');
                        joined.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                }
            }
        }
    }
}

/// What one streamed chunk says about the first choice.
#[derive(Debug, PartialEq)]
pub(crate) struct Chunk {
    /// New text (empty pieces are None).
    pub piece: Option<String>,
    /// The choice has a finish_reason: the answer is complete.
    pub finished: bool,
}

/// Reads a chunk's JSON: `choices[0].delta.content` (chat) or `choices[0].text`
/// (completions); an `error` object (vLLM sends one mid-stream) is an error.
pub(crate) fn parse_chunk(task: GenerateTask, data: &str) -> Result<Chunk, String> {
    let value: Value = serde_json::from_str(data)
        .map_err(|e| format!("a stream event is not JSON ({e}): {}", excerpt(data)))?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string());
        return Err(format!(
            "the stream reported an error: {}",
            excerpt(&message)
        ));
    }
    let Some(choices) = value.get("choices").and_then(Value::as_array) else {
        return Err(format!(
            "a stream event has no \"choices\": {}",
            excerpt(data)
        ));
    };
    // With n > 1 the choices interleave; only the first one is returned.
    let Some(choice) = choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
    else {
        // Usage-only chunks (stream_options.include_usage) have no choices.
        return Ok(Chunk {
            piece: None,
            finished: false,
        });
    };
    let text = match task {
        GenerateTask::Chat => choice.get("delta").and_then(|d| d.get("content")),
        GenerateTask::TextGeneration => choice.get("text"),
    };
    let piece = text
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let finished = choice
        .get("finish_reason")
        .is_some_and(|reason| !reason.is_null());
    Ok(Chunk { piece, finished })
}

/// The text of a whole (non-streamed) answer: `choices[0].text` or
/// `choices[0].message.content`.
pub(crate) fn answer_text(task: GenerateTask, body: &Value) -> Result<String, String> {
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| {
            choices
                .iter()
                .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        })
        .ok_or_else(|| {
            format!(
                "the answer has no \"choices\": {}",
                excerpt(&body.to_string())
            )
        })?;
    let text = match task {
        GenerateTask::TextGeneration => choice.get("text"),
        GenerateTask::Chat => choice.get("message").and_then(|m| m.get("content")),
    };
    match text {
        Some(Value::String(s)) => Ok(s.clone()),
        // A chat answer made of tool calls only has null content.
        Some(Value::Null) => Ok(String::new()),
        _ => Err(format!(
            "the answer's first choice has no {}: {}",
            match task {
                GenerateTask::TextGeneration => "\"text\"",
                GenerateTask::Chat => "\"message\".\"content\"",
            },
            excerpt(&choice.to_string())
        )),
    }
}

/// The first 200 characters, for messages quoting what a server sent.
fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(text: &str) -> Vec<String> {
        let mut reader = EventReader::new(text.as_bytes(), 1 << 20);
        let mut out = Vec::new();
        while let Some(data) = reader.next_data().unwrap() {
            out.push(data);
        }
        out
    }

    #[test]
    fn events_are_data_lines_up_to_a_blank_line() {
        let text = ": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\nid: 3\ndata:{\"b\":2}\r\n\r\n\
                    data: one\ndata: two\n\ndata: [DONE]\n\n";
        assert_eq!(
            events(text),
            vec!["{\"a\":1}", "{\"b\":2}", "one\ntwo", "[DONE]"]
        );
        assert_eq!(
            events("data: tail-without-blank-line"),
            vec!["tail-without-blank-line"]
        );
        assert!(events(": only comments\n\n\n").is_empty());
    }

    #[test]
    fn overlong_lines_and_streams_are_errors() {
        let long = format!("data: {}\n\n", "x".repeat(MAX_LINE_BYTES as usize + 10));
        let mut reader = EventReader::new(long.as_bytes(), u64::MAX);
        assert!(matches!(reader.next_data(), Err(ReadError::Broken(m)) if m.contains("line")));
        let mut reader = EventReader::new("data: 12345\n\ndata: 67890\n\n".as_bytes(), 16);
        assert_eq!(reader.next_data().unwrap().as_deref(), Some("12345"));
        assert!(matches!(reader.next_data(), Err(ReadError::Broken(m)) if m.contains("size")));
    }

    #[test]
    fn chunks_carry_delta_content_or_text_and_the_finish() {
        let chat =
            json!({"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]});
        assert_eq!(
            parse_chunk(GenerateTask::Chat, &chat.to_string()).unwrap(),
            Chunk {
                piece: Some("Hel".into()),
                finished: false
            }
        );
        let role_only = json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]});
        assert_eq!(
            parse_chunk(GenerateTask::Chat, &role_only.to_string())
                .unwrap()
                .piece,
            None
        );
        let done = json!({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]});
        assert_eq!(
            parse_chunk(GenerateTask::TextGeneration, &done.to_string()).unwrap(),
            Chunk {
                piece: None,
                finished: true
            }
        );
        let second_choice = json!({"choices": [{"index": 1, "text": "other"}]});
        assert_eq!(
            parse_chunk(GenerateTask::TextGeneration, &second_choice.to_string())
                .unwrap()
                .piece,
            None
        );
        let err = json!({"error": {"message": "out of memory", "code": 500}});
        assert!(parse_chunk(GenerateTask::Chat, &err.to_string())
            .unwrap_err()
            .contains("out of memory"));
        assert!(parse_chunk(GenerateTask::Chat, "not json").is_err());
    }

    #[test]
    fn whole_answers_read_the_first_choice() {
        let completion =
            json!({"choices": [{"index": 0, "text": " world", "finish_reason": "length"}]});
        assert_eq!(
            answer_text(GenerateTask::TextGeneration, &completion).unwrap(),
            " world"
        );
        let chat =
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}]});
        assert_eq!(answer_text(GenerateTask::Chat, &chat).unwrap(), "Hi");
        assert!(answer_text(GenerateTask::Chat, &completion).is_err());
        assert!(answer_text(GenerateTask::TextGeneration, &json!({"x": 1})).is_err());
    }
}
