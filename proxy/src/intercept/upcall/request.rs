//! What an upcall NOTICE asks for, and whether the shim raised it. A client can raise a NOTICE
//! with any message and detail (`RAISE NOTICE USING MESSAGE = ...`), so the marker alone proves
//! nothing: the proxy acts only on a NOTICE whose context names the shim's own function as the
//! innermost frame, which only code in the schema `pgml_proxy` (the service role's, checked
//! before every write) can produce.

use serde::Deserialize;

/// Message prefix of the shim's upcall NOTICE (see sql/shim.sql).
pub const MARKER: &str = "pgml-proxy:upcall:";

/// The shim function that raises every upcall NOTICE, as Postgres names it in the NOTICE's
/// context (`W` field): always schema-qualified, because the function's `SET search_path =
/// pg_catalog, pg_temp` is in force when PL/pgSQL compiles it and records its signature.
const SHIM_FUNCTION: &str = "pgml_proxy.upcall_call(text,text,text[],jsonb,text)";

/// Message of the NOTICE the shim's `stream_next` raises only to flush the server's output
/// buffer (the stream's rows made so far reach the client); dropped, never answered.
pub const FLUSH_MARKER: &str = "pgml-proxy:flush";

/// The shim function that raises the flush NOTICE.
const FLUSH_FUNCTION: &str = "pgml_proxy.stream_next(uuid,integer,integer)";

/// Whether a NOTICE with this context is the shim's flush NOTICE (see `FLUSH_MARKER`).
pub fn flushed_by_shim(context: Option<&str>) -> bool {
    context
        .and_then(|c| c.split('\n').next())
        .is_some_and(|first| first_frame_is(first, FLUSH_FUNCTION))
}

/// The shim function that raises a stream's NOTICE (pgml.transform_stream, shim 10): its
/// answer is written piece by piece while the caller reads it (see `stream`).
const STREAM_FUNCTION: &str = "pgml_proxy.stream_open(text,jsonb,jsonb,text[],boolean,boolean)";

/// What an upcall asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum UpcallFunction {
    /// pgml.embed: one vector per input.
    Embed,
    /// pgml.chunk: the chunks of the one input (`model` is the splitter).
    Chunk,
    /// pgml.rank: the inputs (documents) ranked against `query` by a cross-encoder.
    Rank {
        /// The query the documents are ranked against.
        query: String,
    },
    /// pgml.transform (`stream` false) or pgml.transform_stream: text generation or chat by
    /// the OpenAI-compatible server the model is routed to (see `transform`).
    Transform {
        /// pgml.transform_stream: one answer row per streamed piece.
        stream: bool,
    },
}

/// One upcall request, decoded from the NOTICE's message and detail.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcallRequest {
    /// The request id (a uuid chosen by the shim).
    pub id: String,
    /// What to compute.
    pub function: UpcallFunction,
    /// Model name (the splitter for pgml.chunk) as the SQL gave it; pgml.transform's may be
    /// absent (neither the task nor args name one).
    pub model: Option<String>,
    /// Texts to embed, chunk or rank, in order.
    pub inputs: Vec<String>,
    /// kwargs object.
    pub kwargs: serde_json::Value,
    /// Whose cached embeddings it may reuse (`Embedder::embed_in`): set by the session that
    /// saw the NOTICE, never by the NOTICE.
    pub cache_partition: String,
    /// Raised by the shim's `stream_open` (a pgml.transform_stream): answered piece by piece
    /// while the caller reads, not in one write. Set by the session from the NOTICE's context.
    pub streamed: bool,
}

#[derive(Deserialize)]
struct Detail {
    /// Absent in the NOTICEs of shim versions before 6 (pgml.embed only).
    #[serde(default)]
    function: Option<String>,
    /// NULL only in pgml.transform's NOTICEs.
    model: Option<String>,
    inputs: Vec<String>,
    kwargs: serde_json::Value,
    #[serde(default)]
    query: Option<String>,
}

impl UpcallRequest {
    /// Decodes a NOTICE's message and detail; None when it is not an upcall (or malformed).
    pub fn from_notice(message: &str, detail: Option<&str>) -> Option<Self> {
        let id = message.strip_prefix(MARKER)?;
        if id.len() != 36 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return None;
        }
        let detail: Detail = serde_json::from_str(detail?).ok()?;
        let function = match (detail.function.as_deref(), detail.query) {
            (None | Some("embed"), _) => UpcallFunction::Embed,
            (Some("chunk"), _) if detail.inputs.len() == 1 => UpcallFunction::Chunk,
            (Some("rank"), Some(query)) => UpcallFunction::Rank { query },
            (Some("transform"), _) => UpcallFunction::Transform { stream: false },
            (Some("transform_stream"), _) => UpcallFunction::Transform { stream: true },
            _ => return None,
        };
        if detail.model.is_none() && !matches!(function, UpcallFunction::Transform { .. }) {
            return None;
        }
        Some(Self {
            id: id.to_string(),
            function,
            model: detail.model,
            inputs: detail.inputs,
            kwargs: detail.kwargs,
            cache_partition: String::new(),
            streamed: false,
        })
    }
}

/// Whether a NOTICE with this context (`W` field) was raised by the shim's `RAISE` itself.
///
/// Postgres lists the context innermost frame first, one per line; for the shim's NOTICE the
/// first line is `PL/pgSQL function pgml_proxy.upcall_call(text,text,text[],jsonb,text) line N
/// at RAISE` whatever the session's settings (`client_min_messages` is pinned by the function;
/// `log_error_verbosity` changes only the server log). A client's `RAISE` cannot set the
/// context: its own frame comes first, and names its own function (`inline_code_block` for a
/// DO block), qualified when it is not the first of its name on the search path. A function of
/// the same name elsewhere reads `public.upcall_call(...)` or `xpgml_proxy.upcall_call(...)`;
/// a name made of other characters is double-quoted (`"pgml_proxy.upcall_call(...) ..."`).
/// Servers whose `lc_messages` translates the frame are accepted when the signature stands
/// alone in the first line: at its start or after a character no identifier can end with,
/// and with no double quote in the line.
pub fn raised_by_shim(context: Option<&str>) -> bool {
    raising_function(context).is_some()
}

/// Which of the shim's functions raised the NOTICE with this context: Some(true) for
/// `stream_open`, Some(false) for `upcall_call`, None when neither did (see `raised_by_shim`).
pub fn raising_function(context: Option<&str>) -> Option<bool> {
    let first = context.and_then(|c| c.split('\n').next())?;
    [(SHIM_FUNCTION, false), (STREAM_FUNCTION, true)]
        .into_iter()
        .find(|(function, _)| first_frame_is(first, function))
        .map(|(_, streamed)| streamed)
}

fn first_frame_is(first: &str, function: &str) -> bool {
    if let Some(english) = first.strip_prefix("PL/pgSQL function ") {
        return english
            .strip_prefix(function)
            .and_then(|r| r.strip_prefix(" line "))
            .and_then(|r| r.strip_suffix(" at RAISE"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    }
    if first.contains('"') || first.matches(function).count() != 1 {
        return false;
    }
    let Some(at) = first.find(function) else {
        return false;
    };
    // An identifier may end with a letter, digit, `_`, `$` or any non-ASCII character.
    first[..at]
        .chars()
        .next_back()
        .is_none_or(|c| c.is_ascii() && !c.is_ascii_alphanumeric() && c != '_' && c != '$')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_notices_decode_and_only_they_may_name_no_model() {
        let id = "pgml-proxy:upcall:0f1e2d3c-4b5a-4697-8877-a6b5c4d3e2f1";
        let detail = |function: &str, model: &str| {
            format!(
                r#"{{"function": "{function}", "model": {model}, "inputs": ["hi"], "kwargs": {{"task": {{"task": "text-generation"}}, "args": {{}}, "chat": false, "cache": false}}, "query": null}}"#
            )
        };
        let request = UpcallRequest::from_notice(id, Some(&detail("transform", "null"))).unwrap();
        assert_eq!(
            request.function,
            UpcallFunction::Transform { stream: false }
        );
        assert_eq!(request.model, None);
        let request =
            UpcallRequest::from_notice(id, Some(&detail("transform_stream", "\"test/llm\"")))
                .unwrap();
        assert_eq!(request.function, UpcallFunction::Transform { stream: true });
        assert_eq!(request.model.as_deref(), Some("test/llm"));
        assert_eq!(request.inputs, ["hi"]);
        assert_eq!(
            UpcallRequest::from_notice(id, Some(&detail("embed", "null"))),
            None
        );
        assert_eq!(
            UpcallRequest::from_notice(id, Some(&detail("chunk", "null"))),
            None
        );
    }

    #[test]
    fn only_the_shims_own_raise_is_an_upcall() {
        let shim = "PL/pgSQL function pgml_proxy.upcall_call(text,text,text[],jsonb,text) line 32 at RAISE";
        assert!(raised_by_shim(Some(shim)));
        assert!(raised_by_shim(Some(&format!(
            "{shim}\nSQL function \"embed\" statement 1\nPL/pgSQL function inline_code_block line 1 at PERFORM"
        ))));
        // Translated (lc_messages=de).
        assert!(raised_by_shim(Some(
            "PL/pgSQL-Funktion pgml_proxy.upcall_call(text,text,text[],jsonb,text) Zeile 32 bei RAISE"
        )));
        for forged in [
            "PL/pgSQL function inline_code_block line 1 at RAISE",
            "PL/pgSQL function public.upcall_call(text,text,text[],jsonb,text) line 1 at RAISE",
            "PL/pgSQL function xpgml_proxy.upcall_call(text,text,text[],jsonb,text) line 1 at RAISE",
            "PL/pgSQL function x$pgml_proxy.upcall_call(text,text,text[],jsonb,text) line 1 at RAISE",
            "PL/pgSQL function épgml_proxy.upcall_call(text,text,text[],jsonb,text) line 1 at RAISE",
            "PL/pgSQL function \"pgml_proxy.upcall_call(text,text,text[],jsonb,text) line 1 at R\"() line 1 at RAISE",
            "PL/pgSQL function f() line 1 at RAISE\nPL/pgSQL function pgml_proxy.upcall_call(text,text,text[],jsonb,text) line 32 at RAISE",
            "PL/pgSQL function pgml_proxy.upcall_call(text,text,text[],jsonb,text) line  at RAISE",
            "PL/pgSQL function pgml_proxy.upcall_call(text,text,text[],jsonb,text) line 9 at SQL statement",
            "",
        ] {
            assert!(!raised_by_shim(Some(forged)), "{forged}");
        }
        assert!(!raised_by_shim(None));
        let stream = "PL/pgSQL function pgml_proxy.stream_open(text,jsonb,jsonb,text[],boolean,boolean) line 38 at RAISE\nSQL function \"transform_stream\" statement 1";
        assert_eq!(raising_function(Some(stream)), Some(true));
        assert_eq!(raising_function(Some(shim)), Some(false));
        assert!(flushed_by_shim(Some(
            "PL/pgSQL function pgml_proxy.stream_next(uuid,integer,integer) line 22 at RAISE\nSQL function \"transform_stream\" statement 1"
        )));
        assert!(!flushed_by_shim(Some(
            "PL/pgSQL function inline_code_block line 1 at RAISE"
        )));
        assert_eq!(
            raising_function(Some(
                "PL/pgSQL function pgml_proxy.stream_next(uuid,integer,integer) line 22 at RAISE"
            )),
            None
        );
        assert_eq!(
            raising_function(Some(
                "PL/pgSQL function public.stream_open(text,jsonb,jsonb,text[],boolean,boolean) line 1 at RAISE"
            )),
            None
        );
    }
}
