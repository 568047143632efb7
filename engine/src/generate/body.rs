//! PostgresML's pgml.transform args turned into an OpenAI request body: the Hugging Face
//! names mapped (`max_new_tokens` -> `max_tokens`, `do_sample: false` -> temperature 0), the
//! OpenAI ones checked, everything else passed through for the server to judge. No I/O.

use serde_json::{Map, Value};

use crate::error::EngineError;

/// Args the engine sets itself or that mean nothing to an OpenAI server.
const REMOVED: &[&str] = &["model", "stream", "max_new_tokens", "do_sample"];

/// The OpenAI body's fields that come from `args` (everything but model, prompt/messages and
/// stream), checked once per call.
pub(crate) fn map_args(args: &Map<String, Value>) -> Result<Map<String, Value>, EngineError> {
    let mut out = Map::new();
    for (key, value) in args {
        if REMOVED.contains(&key.as_str()) || value.is_null() {
            continue;
        }
        match key.as_str() {
            "max_tokens" | "n" => {
                positive(key, value)?;
            }
            "temperature" | "top_p" | "presence_penalty" | "frequency_penalty"
                if !value.is_number() =>
            {
                return Err(EngineError::bad_args(format!(
                    "args \"{key}\" must be a number, got {value}"
                )));
            }
            "seed" if !(value.is_i64() || value.is_u64()) => {
                return Err(EngineError::bad_args(format!(
                    "args \"seed\" must be an integer, got {value}"
                )));
            }
            "stop" => stop(value)?,
            _ => {}
        }
        out.insert(key.clone(), value.clone());
    }
    if !out.contains_key("max_tokens") {
        if let Some(value) = args.get("max_new_tokens").filter(|v| !v.is_null()) {
            positive("max_new_tokens", value)?;
            out.insert("max_tokens".into(), value.clone());
        }
    }
    match args.get("do_sample") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        // Greedy decoding, as transformers does with do_sample=False.
        Some(Value::Bool(false)) => {
            out.entry("temperature").or_insert(Value::from(0));
        }
        Some(other) => {
            return Err(EngineError::bad_args(format!(
                "args \"do_sample\" must be true or false, got {other}"
            )))
        }
    }
    Ok(out)
}

/// The whole body: `model` (when named), then the input (`prompt` or `messages`), the
/// mapped args and `stream`.
pub(crate) fn body(
    model: Option<&str>,
    input: (&str, Value),
    args: &Map<String, Value>,
    stream: bool,
) -> Value {
    let mut body = Map::new();
    if let Some(model) = model {
        body.insert("model".into(), Value::from(model));
    }
    body.insert(input.0.into(), input.1);
    for (key, value) in args {
        body.insert(key.clone(), value.clone());
    }
    body.insert("stream".into(), Value::Bool(stream));
    Value::Object(body)
}

fn positive(key: &str, value: &Value) -> Result<(), EngineError> {
    match value.as_u64() {
        Some(n) if n > 0 => Ok(()),
        _ => Err(EngineError::bad_args(format!(
            "args \"{key}\" must be a positive integer, got {value}"
        ))),
    }
}

fn stop(value: &Value) -> Result<(), EngineError> {
    let ok = match value {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(EngineError::bad_args(format!(
            "args \"stop\" must be a string or an array of strings, got {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapped(args: Value) -> Result<Value, EngineError> {
        let Value::Object(args) = args else {
            panic!("test args must be an object")
        };
        map_args(&args).map(Value::Object)
    }

    #[test]
    fn hugging_face_names_become_openai_ones() {
        assert_eq!(
            mapped(
                json!({"max_new_tokens": 50, "temperature": 0.7, "top_p": 0.9,
                          "stop": ["\n"], "seed": 7, "n": 1, "presence_penalty": 0.1,
                          "frequency_penalty": -0.5, "model": "m", "stream": true})
            )
            .unwrap(),
            json!({"max_tokens": 50, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"],
                   "seed": 7, "n": 1, "presence_penalty": 0.1, "frequency_penalty": -0.5})
        );
    }

    #[test]
    fn max_tokens_wins_over_max_new_tokens() {
        assert_eq!(
            mapped(json!({"max_new_tokens": 50, "max_tokens": 10})).unwrap(),
            json!({"max_tokens": 10})
        );
    }

    #[test]
    fn do_sample_false_means_temperature_zero_unless_given() {
        assert_eq!(
            mapped(json!({"do_sample": false})).unwrap(),
            json!({"temperature": 0})
        );
        assert_eq!(
            mapped(json!({"do_sample": false, "temperature": 0.5})).unwrap(),
            json!({"temperature": 0.5})
        );
        assert_eq!(mapped(json!({"do_sample": true})).unwrap(), json!({}));
    }

    #[test]
    fn unknown_args_pass_through_unchanged() {
        assert_eq!(
            mapped(json!({"top_k": 40, "repetition_penalty": 1.1, "logit_bias": {"1": 2}}))
                .unwrap(),
            json!({"top_k": 40, "repetition_penalty": 1.1, "logit_bias": {"1": 2}})
        );
    }

    #[test]
    fn bad_values_are_22023_naming_the_key() {
        for (args, key) in [
            (json!({"max_new_tokens": 0}), "max_new_tokens"),
            (json!({"max_tokens": -3}), "max_tokens"),
            (json!({"max_tokens": "50"}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"stop": 3}), "stop"),
            (json!({"stop": ["a", 1]}), "stop"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"do_sample": "no"}), "do_sample"),
            (json!({"n": 0}), "n"),
        ] {
            let err = mapped(args).unwrap_err();
            assert_eq!(err.sqlstate(), "22023");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn the_body_has_model_input_args_and_stream() {
        let args = map_args(&Map::from_iter([("max_tokens".to_string(), json!(5))])).unwrap();
        assert_eq!(
            body(Some("m"), ("prompt", json!("hi")), &args, true),
            json!({"model": "m", "prompt": "hi", "max_tokens": 5, "stream": true})
        );
        assert_eq!(
            body(None, ("messages", json!([])), &Map::new(), false),
            json!({"messages": [], "stream": false})
        );
    }
}
