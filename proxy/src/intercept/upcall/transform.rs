//! pgml.transform and pgml.transform_stream through the upcall: the shim's request (task,
//! args, inputs, chat flag) becomes an engine `GenerateRequest`, and the result becomes the
//! answer's JSON texts. The HTTP side (routes, OpenAI bodies, server errors) is the engine's.

use pgml_engine::{GenerateRequest, GenerateTask, Generator};
use serde_json::{Map, Value};

use super::UpcallRequest;
use crate::error::{ProxyError, UpstreamError};

/// Most bytes of pieces one pgml.transform_stream answer collects (the pieces wait for the
/// answer in the proxy until the stream ends; a server that never stops would otherwise grow
/// it without bound). As pgml.chunk's bound on its chunks.
const MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;

/// The tasks PostgresML users call for LLMs; other pipelines (summarization, translation,
/// classification...) are not routed to an OpenAI-compatible server.
const TEXT_GENERATION: &str = "text-generation";
const CONVERSATIONAL: &str = "conversational";

/// A Postgres error with `sqlstate` (the upcall writes it as the call's error).
fn sql_error(sqlstate: &str, message: String) -> ProxyError {
    ProxyError::Upstream(UpstreamError {
        sqlstate: sqlstate.to_owned(),
        message,
        detail: None,
    })
}

/// The engine request for an upcall of pgml.transform or pgml.transform_stream (`function`
/// names it in errors). kwargs, as the shim builds them: `{"task": object, "args": object,
/// "chat": bool, "cache": bool}`.
pub(super) fn generate_request(
    function: &str,
    request: &UpcallRequest,
) -> Result<GenerateRequest, ProxyError> {
    let kwargs = &request.kwargs;
    let task = kwargs.get("task").unwrap_or(&Value::Null);
    // A task object without "task" names only the model: PostgresML's pipeline then took the
    // model's own task, which for the LLMs routed here is text generation.
    let name = match task.get("task") {
        None | Some(Value::Null) => TEXT_GENERATION.to_owned(),
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(sql_error(
                "22023",
                format!("pgml.{function}: the task's \"task\" must be a string, got {other}"),
            ))
        }
    };
    let chat = kwargs.get("chat").and_then(Value::as_bool).unwrap_or(false);
    let task = match name.as_str() {
        CONVERSATIONAL => GenerateTask::Chat,
        TEXT_GENERATION if chat => GenerateTask::Chat,
        TEXT_GENERATION => GenerateTask::TextGeneration,
        other => {
            return Err(sql_error(
                "0A000",
                format!(
                    "pgml.{function}: task \"{other}\" is not supported by pgml-proxy: only \
                     \"text-generation\" and chat (\"conversational\", or jsonb[] messages) are \
                     routed to an OpenAI-compatible server"
                ),
            ))
        }
    };
    let args = match kwargs.get("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(args)) => args.clone(),
        Some(other) => {
            return Err(sql_error(
                "22023",
                format!("pgml.{function}: args must be a JSON object, got {other}"),
            ))
        }
    };
    let inputs = match task {
        GenerateTask::TextGeneration => request
            .inputs
            .iter()
            .map(|i| Value::String(i.clone()))
            .collect(),
        GenerateTask::Chat => request
            .inputs
            .iter()
            .enumerate()
            .map(|(n, i)| message(function, n + 1, i))
            .collect::<Result<_, _>>()?,
    };
    Ok(GenerateRequest {
        model: request.model.clone(),
        task,
        inputs,
        args,
        cache: kwargs
            .get("cache")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Chat input `position` (1-based) as a `{"role", "content"}` object.
fn message(function: &str, position: usize, input: &str) -> Result<Value, ProxyError> {
    let bad = |why: &str| {
        sql_error(
            "22023",
            format!(
                "pgml.{function}: chat input {position} must be a {{\"role\": ..., \"content\": ...}} \
                 JSON object: {why}"
            ),
        )
    };
    let value: Value = serde_json::from_str(input).map_err(|_| bad("it is not JSON"))?;
    let Some(object) = value.as_object() else {
        return Err(bad("it is not an object"));
    };
    if !object.get("role").is_some_and(Value::is_string) {
        return Err(bad("it has no \"role\" string"));
    }
    if !object.contains_key("content") {
        return Err(bad("it has no \"content\""));
    }
    Ok(value)
}

/// The request of one pgml.transform call as a statement's prefetch read it: the text
/// `pgml_proxy.transform_key` made, `{"model", "inputs": [...], "kwargs": {...}}`, the pieces
/// the shim's upcall sends. None when it is not one, or an input is NULL (the stand-in's
/// pgml.transform then raises pgml.transform's own error for it).
pub(super) fn prefetched_request(key: &str) -> Option<UpcallRequest> {
    #[derive(serde::Deserialize)]
    struct Key {
        model: Option<String>,
        inputs: Vec<Option<String>>,
        kwargs: Value,
    }
    let key: Key = serde_json::from_str(key).ok()?;
    Some(UpcallRequest {
        id: String::new(),
        function: super::UpcallFunction::Transform { stream: false },
        model: key.model,
        inputs: key.inputs.into_iter().collect::<Option<_>>()?,
        kwargs: key.kwargs,
        cache_partition: String::new(),
        streamed: false,
    })
}

/// pgml.transform's result for `request`. No deadline of its own: a request may wait its
/// turn behind the server's other requests (the generator's bound), and `--generate-timeout`
/// bounds each wait for the server once it is sent.
pub(super) async fn answer(
    generator: &Generator,
    request: &UpcallRequest,
) -> Result<Value, ProxyError> {
    let generate = generate_request("transform", request)?;
    Ok(generator.transform(generate).await?)
}

/// Awaits `calls` (key, answer) as they finish and keeps their answers while the keys and
/// the answers' JSON texts come to at most `max_bytes` together; at the first one past it,
/// the calls still running are dropped (which stops their requests). A bound on what one
/// statement's prefetch holds, whatever the server sends and however many rows ask.
pub(super) async fn collect_within<F>(
    calls: impl IntoIterator<Item = F>,
    max_bytes: usize,
) -> Vec<(String, Result<Value, ProxyError>)>
where
    F: std::future::Future<Output = (String, Result<Value, ProxyError>)>,
{
    use futures::StreamExt;
    let mut running: futures::stream::FuturesUnordered<F> = calls.into_iter().collect();
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    while let Some((key, answer)) = running.next().await {
        let size = key.len() + answer.as_ref().map_or(0, |v| v.to_string().len());
        bytes = bytes.saturating_add(size);
        if bytes > max_bytes {
            tracing::debug!(
                kept = kept.len(),
                "pgml.transform answers over the prefetch's bound; the shim will upcall the rest"
            );
            break;
        }
        kept.push((key, answer));
    }
    kept
}

/// pgml.transform's answer: the result as one JSON text.
pub(super) async fn transform(
    generator: &Generator,
    request: GenerateRequest,
) -> Result<Vec<String>, ProxyError> {
    Ok(vec![generator.transform(request).await?.to_string()])
}

/// pgml.transform_stream's answer: one `["piece"]` JSON text per streamed piece, in order,
/// collected until the stream ends (the rows reach the client after the last piece).
pub(super) async fn transform_stream(
    generator: &Generator,
    request: GenerateRequest,
) -> Result<Vec<String>, ProxyError> {
    let mut pieces = generator.transform_stream(request).await?;
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(piece) = pieces.recv().await {
        let row = Value::Array(vec![Value::String(piece?)]).to_string();
        bytes = bytes.saturating_add(row.len());
        if bytes > MAX_STREAM_BYTES {
            // Dropping the receiver stops the HTTP request.
            return Err(sql_error(
                "54000",
                format!(
                    "pgml.transform_stream: the server streamed more than {} MiB; lower \
                     max_new_tokens",
                    MAX_STREAM_BYTES / (1024 * 1024)
                ),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The error that fails a call the server did not finish within the upcall timeout.
pub(super) fn timed_out(stream: bool, after: std::time::Duration) -> ProxyError {
    let function = if stream {
        "transform_stream"
    } else {
        "transform"
    };
    sql_error(
        "57014",
        format!(
            "pgml.{function}: the model server did not finish within {} ms (--upcall-timeout-ms)",
            after.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::upcall::UpcallFunction;
    use serde_json::json;

    /// The error of a request that must be refused (GenerateRequest need not be Debug).
    fn refused(request: &UpcallRequest) -> ProxyError {
        match generate_request("transform", request) {
            Ok(_) => panic!("accepted: {:?}", request.kwargs),
            Err(e) => e,
        }
    }

    fn upcall(model: Option<&str>, inputs: &[&str], kwargs: Value) -> UpcallRequest {
        UpcallRequest {
            id: "0f1e2d3c-4b5a-4697-8877-a6b5c4d3e2f1".into(),
            function: UpcallFunction::Transform { stream: false },
            model: model.map(str::to_owned),
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
            kwargs,
            cache_partition: String::new(),
            streamed: false,
        }
    }

    #[tokio::test]
    async fn prefetched_answers_past_the_bound_are_dropped_with_the_calls_still_running() {
        let answer = |key: &str, text: &str| {
            let (key, text) = (key.to_owned(), text.to_owned());
            async move { (key, Ok(json!([text]))) }
        };
        // Each answer here is 1 (key) + 14 (`["0123456789"]`) = 15 bytes.
        let ten = "0123456789";
        let calls = vec![answer("a", ten), answer("b", ten), answer("c", ten)];
        let kept = collect_within(calls, 30).await;
        assert_eq!(kept.len(), 2, "the third would pass 30 bytes");
        let calls = vec![answer("a", ten), answer("b", ten), answer("c", ten)];
        assert_eq!(collect_within(calls, 45).await.len(), 3);
        // Errors weigh their key only, and are kept as answers.
        let failed = async {
            (
                "e".to_owned(),
                Err(sql_error("58000", "the server failed".into())),
            )
        };
        let kept = collect_within(vec![failed], 1).await;
        assert!(matches!(kept.as_slice(), [(k, Err(_))] if k == "e"));
    }

    #[test]
    fn text_generation_with_text_inputs_is_one_prompt_per_input() {
        let request = generate_request(
            "transform",
            &upcall(
                Some("test/llm"),
                &["a", "b"],
                json!({"task": {"task": "text-generation", "model": "test/llm"},
                       "args": {"max_new_tokens": 50}, "chat": false, "cache": false}),
            ),
        )
        .unwrap();
        assert_eq!(request.task, GenerateTask::TextGeneration);
        assert_eq!(request.model.as_deref(), Some("test/llm"));
        assert_eq!(request.inputs, vec![json!("a"), json!("b")]);
        assert_eq!(request.args.get("max_new_tokens"), Some(&json!(50)));
    }

    #[test]
    fn jsonb_messages_or_the_conversational_task_are_a_chat() {
        let messages = [
            r#"{"role": "system", "content": "be brief"}"#,
            r#"{"role": "user", "content": "hi"}"#,
        ];
        for kwargs in [
            json!({"task": {"task": "text-generation"}, "args": {}, "chat": true}),
            json!({"task": {"task": "conversational"}, "args": {}, "chat": false}),
            json!({"task": {"model": "m"}, "args": {}, "chat": true}),
        ] {
            let request =
                generate_request("transform", &upcall(None, &messages, kwargs.clone())).unwrap();
            assert_eq!(request.task, GenerateTask::Chat, "{kwargs}");
            assert_eq!(request.inputs[1], json!({"role": "user", "content": "hi"}));
            assert_eq!(request.model, None);
        }
    }

    #[test]
    fn a_malformed_chat_message_is_22023_naming_its_position() {
        for bad in [
            "not json",
            "[1]",
            r#"{"content": "x"}"#,
            r#"{"role": "user"}"#,
        ] {
            let err = refused(&upcall(
                None,
                &[r#"{"role": "user", "content": "ok"}"#, bad],
                json!({"task": {"task": "conversational"}, "chat": true}),
            ));
            assert_eq!(err.sqlstate(), "22023", "{bad}");
            assert!(err.to_string().contains("chat input 2"), "{err}");
        }
    }

    #[test]
    fn other_pipelines_are_0a000_naming_the_task() {
        for task in ["summarization", "translation", "text-classification"] {
            let err = refused(&upcall(
                None,
                &["x"],
                json!({"task": {"task": task}, "args": {}}),
            ));
            assert_eq!(err.sqlstate(), "0A000");
            let message = err.to_string();
            assert!(message.contains(&format!("\"{task}\"")), "{message}");
            assert!(message.contains("text-generation"), "{message}");
        }
    }

    #[test]
    fn args_that_are_not_an_object_are_22023() {
        let err = refused(&upcall(
            None,
            &["x"],
            json!({"task": {"task": "text-generation"}, "args": [1]}),
        ));
        assert_eq!(err.sqlstate(), "22023");
        let err = refused(&upcall(
            None,
            &["x"],
            json!({"task": {"task": 7}, "args": {}}),
        ));
        assert_eq!(err.sqlstate(), "22023");
    }
}
