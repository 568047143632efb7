//! The splitter classes and their constructor arguments: which LangChain class a splitter name
//! is, the kwargs it takes, and `TextSplitter.__init__`'s checks with Python's wording. What the
//! kwargs mean for splitting is `split`'s business.

use serde_json::{Map, Value};

use crate::ChunkError;

/// Which LangChain class to mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Recursive,
    Character,
    Markdown,
    Latex,
    Python,
}

impl Kind {
    /// The keyword arguments the class's constructor takes (besides `TextSplitter`'s).
    fn own_kwargs(self) -> &'static [&'static str] {
        match self {
            Kind::Character => &["separator", "is_separator_regex"],
            Kind::Recursive => &["separators", "is_separator_regex"],
            Kind::Markdown | Kind::Latex | Kind::Python => &["is_separator_regex"],
        }
    }

    fn class_name(self) -> &'static str {
        match self {
            Kind::Recursive => "RecursiveCharacterTextSplitter",
            Kind::Character => "CharacterTextSplitter",
            Kind::Markdown => "MarkdownTextSplitter",
            Kind::Latex => "LatexTextSplitter",
            Kind::Python => "PythonCodeTextSplitter",
        }
    }

    /// `RecursiveCharacterTextSplitter.get_separators_for_language`. The presets pass them
    /// without `is_separator_regex=True`, so LangChain escapes them: `"\n#{1,6} "` is
    /// searched for literally unless the caller sets `is_separator_regex`.
    fn preset_separators(self) -> &'static [&'static str] {
        match self {
            Kind::Markdown => &[
                "\n#{1,6} ",
                "```\n",
                "\n\\*\\*\\*+\n",
                "\n---+\n",
                "\n___+\n",
                "\n\n",
                "\n",
                " ",
                "",
            ],
            Kind::Latex => &[
                "\n\\\\chapter{",
                "\n\\\\section{",
                "\n\\\\subsection{",
                "\n\\\\subsubsection{",
                "\n\\\\begin{enumerate}",
                "\n\\\\begin{itemize}",
                "\n\\\\begin{description}",
                "\n\\\\begin{list}",
                "\n\\\\begin{quote}",
                "\n\\\\begin{quotation}",
                "\n\\\\begin{verse}",
                "\n\\\\begin{verbatim}",
                "\n\\\\begin{align}",
                "$$",
                "$",
                " ",
                "",
            ],
            Kind::Python => &["\nclass ", "\ndef ", "\n\tdef ", "\n\n", "\n", " ", ""],
            Kind::Recursive | Kind::Character => &["\n\n", "\n", " ", ""],
        }
    }
}

const BASE_KWARGS: [&str; 6] = [
    "chunk_size",
    "chunk_overlap",
    "length_function",
    "keep_separator",
    "add_start_index",
    "strip_whitespace",
];

/// `keep_separator`: falsy, `"end"`, or any other truthy value (which means `"start"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    No,
    Start,
    End,
}

/// A splitter's settings, as its class's constructor takes them from the kwargs.
pub(crate) struct Settings {
    pub(crate) chunk_size: f64,
    pub(crate) chunk_overlap: f64,
    pub(crate) keep: Keep,
    pub(crate) strip_whitespace: bool,
    /// Python type name of a given `length_function` (never callable from JSON).
    pub(crate) length_function: Option<&'static str>,
    pub(crate) is_regex: bool,
    /// The separators as given (or the class's own), not yet compiled.
    pub(crate) separators: Vec<String>,
}

impl Settings {
    /// `Class(**kwargs)`, with LangChain's checks in LangChain's order.
    pub(crate) fn parse(kind: Kind, kwargs: &Value) -> Result<Settings, ChunkError> {
        let kwargs: &Map<String, Value> = match kwargs {
            Value::Object(map) => map,
            other => {
                return Err(type_error(format!(
                    "{}() argument after ** must be a mapping, not {}",
                    kind.class_name(),
                    py_type(other)
                )))
            }
        };
        for name in kwargs.keys() {
            if matches!(kind, Kind::Markdown | Kind::Latex | Kind::Python) && name == "separators" {
                return Err(ChunkError::UnknownKwarg {
                    name: name.clone(),
                    message: "RecursiveCharacterTextSplitter.__init__() got multiple values for \
                              keyword argument 'separators'"
                        .to_owned(),
                });
            }
            if !BASE_KWARGS.contains(&name.as_str()) && !kind.own_kwargs().contains(&name.as_str())
            {
                return Err(ChunkError::UnknownKwarg {
                    name: name.clone(),
                    message: format!(
                        "TextSplitter.__init__() got an unexpected keyword argument '{name}'"
                    ),
                });
            }
        }

        let (chunk_size, size_repr) = py_number(kwargs.get("chunk_size"), 4000).map_err(|t| {
            type_error(format!(
                "'<=' not supported between instances of '{t}' and 'int'"
            ))
        })?;
        if chunk_size <= 0.0 {
            return Err(value_error(format!(
                "chunk_size must be > 0, got {size_repr}"
            )));
        }
        let (chunk_overlap, overlap_repr) =
            py_number(kwargs.get("chunk_overlap"), 200).map_err(|t| {
                type_error(format!(
                    "'<' not supported between instances of '{t}' and 'int'"
                ))
            })?;
        if chunk_overlap < 0.0 {
            return Err(value_error(format!(
                "chunk_overlap must be >= 0, got {overlap_repr}"
            )));
        }
        if chunk_overlap > chunk_size {
            return Err(value_error(format!(
                "Got a larger chunk overlap ({overlap_repr}) than chunk size ({size_repr}), \
                 should be smaller."
            )));
        }

        let keep = match kwargs.get("keep_separator") {
            None if kind == Kind::Character => Keep::No,
            None => Keep::Start,
            Some(Value::String(s)) if s == "end" => Keep::End,
            Some(v) if truthy(v) => Keep::Start,
            Some(_) => Keep::No,
        };
        let strip_whitespace = kwargs.get("strip_whitespace").is_none_or(truthy);
        let is_regex = kwargs.get("is_separator_regex").is_some_and(truthy);
        let length_function = kwargs.get("length_function").map(py_type);

        let separators: Vec<String> = match kind {
            Kind::Character => match kwargs.get("separator") {
                None => vec!["\n\n".to_owned()],
                Some(Value::String(s)) => vec![s.clone()],
                Some(other) => {
                    return Err(type_error(format!(
                        "separator must be a string, not {}",
                        py_type(other)
                    )))
                }
            },
            Kind::Recursive => match kwargs.get("separators") {
                Some(v) if truthy(v) => separator_list(v)?,
                _ => to_strings(kind.preset_separators()),
            },
            Kind::Markdown | Kind::Latex | Kind::Python => to_strings(kind.preset_separators()),
        };

        Ok(Settings {
            chunk_size,
            chunk_overlap,
            keep,
            strip_whitespace,
            length_function,
            is_regex,
            separators,
        })
    }
}

/// `separators` given and truthy: a list of strings, or a string (a sequence of its chars).
fn separator_list(v: &Value) -> Result<Vec<String>, ChunkError> {
    match v {
        Value::String(s) => Ok(s.chars().map(String::from).collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(type_error(format!(
                    "separators must be strings, not {}",
                    py_type(other)
                ))),
            })
            .collect(),
        other => Err(type_error(format!(
            "separators must be a list of strings, not {}",
            py_type(other)
        ))),
    }
}

fn to_strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A Python number from JSON (bools are 0 and 1) with its Python spelling, the default when
/// absent, or the Python type name of what is there instead.
fn py_number(v: Option<&Value>, default: i64) -> Result<(f64, String), &'static str> {
    match v {
        None => Ok((default as f64, default.to_string())),
        Some(Value::Number(n)) => Ok((n.as_f64().unwrap_or(f64::NAN), n.to_string())),
        Some(Value::Bool(b)) => Ok((
            f64::from(u8::from(*b)),
            if *b { "True" } else { "False" }.to_owned(),
        )),
        Some(other) => Err(py_type(other)),
    }
}

/// Python's `bool(value)` for the value `json.loads` makes of it.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// A `TypeError` with Python's wording.
pub(crate) fn type_error(message: String) -> ChunkError {
    ChunkError::BadKwarg {
        python: "TypeError",
        message,
    }
}

fn value_error(message: String) -> ChunkError {
    ChunkError::BadKwarg {
        python: "ValueError",
        message,
    }
}
