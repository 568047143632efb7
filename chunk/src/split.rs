//! The splitters: LangChain's `TextSplitter.__init__` checks, `CharacterTextSplitter`,
//! `RecursiveCharacterTextSplitter` (and its Markdown/LaTeX/Python presets), `_merge_splits`.

use std::borrow::Cow;

use fancy_regex::Regex;
use serde_json::{Map, Value};

use crate::{pyre, ChunkError};

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

/// Python's recursion limit is 1000 frames; a few are the caller's.
const MAX_DEPTH: usize = 990;

/// `keep_separator`: falsy, `"end"`, or any other truthy value (which means `"start"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    No,
    Start,
    End,
}

/// One separator: its text as given and, with `is_separator_regex`, its compiled pattern
/// (or why it does not compile, raised only when LangChain would first use it).
struct Sep {
    raw: String,
    regex: Option<Result<Regex, ChunkError>>,
}

impl Sep {
    fn new(raw: String, is_regex: bool, text_len: usize) -> Sep {
        let regex = (is_regex && !raw.is_empty()).then(|| pyre::compile(&raw, text_len));
        Sep { raw, regex }
    }

    /// `re.search(pattern, text)`.
    fn found_in(&self, text: &str) -> Result<bool, ChunkError> {
        match &self.regex {
            None => Ok(text.contains(self.raw.as_str())),
            Some(Ok(re)) => re
                .is_match(text)
                .map_err(|err| pyre::runtime_error(&self.raw, &err)),
            Some(Err(err)) => Err(err.clone()),
        }
    }
}

/// A piece of text with its length in code points.
type Piece<'t> = (Cow<'t, str>, usize);

pub(crate) struct Splitter {
    kind: Kind,
    chunk_size: f64,
    chunk_overlap: f64,
    keep: Keep,
    strip_whitespace: bool,
    /// Python type name of a given `length_function` (never callable from JSON).
    length_function: Option<&'static str>,
    is_regex: bool,
    separators: Vec<Sep>,
    /// Output bytes still allowed (see [`Splitter::limit_output`]).
    budget: std::cell::Cell<usize>,
}

impl Splitter {
    /// `Class(**kwargs)`, with LangChain's checks in LangChain's order, for splitting a text
    /// of `text_len` bytes (which sizes the regex engine's backtracking limit).
    pub(crate) fn new(kind: Kind, kwargs: &Value, text_len: usize) -> Result<Splitter, ChunkError> {
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

        let raw_separators: Vec<String> = match kind {
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
        let separators = raw_separators
            .into_iter()
            .map(|raw| Sep::new(raw, is_regex, text_len))
            .collect();

        Ok(Splitter {
            kind,
            chunk_size,
            chunk_overlap,
            keep,
            strip_whitespace,
            length_function,
            is_regex,
            separators,
            budget: std::cell::Cell::new(usize::MAX),
        })
    }

    /// Fails the split with [`ChunkError::OutputTooLarge`] once its chunks exceed `limit`
    /// bytes in all (overlap can make the output many times the text).
    pub(crate) fn limit_output(mut self, limit: usize) -> Splitter {
        self.budget = std::cell::Cell::new(limit);
        self
    }

    /// Takes `chunk` out of the output budget.
    fn charge(&self, chunk: String) -> Result<String, ChunkError> {
        let left = self.budget.get();
        if chunk.len() > left {
            return Err(ChunkError::OutputTooLarge);
        }
        self.budget.set(left - chunk.len());
        Ok(chunk)
    }

    /// `split_text(text)`.
    pub(crate) fn split_text(&self, text: &str) -> Result<Vec<String>, ChunkError> {
        if self.kind == Kind::Character {
            return self.split_character(text);
        }
        let mut out = Vec::new();
        self.split_recursive(text, &self.separators, 0, &mut out)?;
        Ok(out)
    }

    /// `CharacterTextSplitter.split_text`.
    fn split_character(&self, text: &str) -> Result<Vec<String>, ChunkError> {
        let Some(sep) = self.separators.first() else {
            return Ok(Vec::new());
        };
        let splits = self.split_with(text, sep)?;
        let lookaround = self.is_regex
            && ["(?=", "(?<!", "(?<=", "(?!"]
                .iter()
                .any(|p| sep.raw.starts_with(p));
        let merge_sep = if self.keep != Keep::No || lookaround {
            ""
        } else {
            sep.raw.as_str()
        };
        self.check_length_function()?;
        self.merge(&with_lengths(splits), merge_sep)
    }

    /// `RecursiveCharacterTextSplitter._split_text`, appending to `out`.
    fn split_recursive(
        &self,
        text: &str,
        separators: &[Sep],
        depth: usize,
        out: &mut Vec<String>,
    ) -> Result<(), ChunkError> {
        if depth >= MAX_DEPTH {
            return Err(ChunkError::TooDeep);
        }
        let Some(mut chosen) = separators.len().checked_sub(1) else {
            return Ok(());
        };
        let mut rest: &[Sep] = &[];
        for (i, sep) in separators.iter().enumerate() {
            if sep.raw.is_empty() {
                chosen = i;
                break;
            }
            if sep.found_in(text)? {
                chosen = i;
                rest = separators.get(i + 1..).unwrap_or(&[]);
                break;
            }
        }
        let Some(sep) = separators.get(chosen) else {
            return Ok(());
        };
        let splits = self.split_with(text, sep)?;
        if !splits.is_empty() {
            self.check_length_function()?;
        }
        let merge_sep = if self.keep != Keep::No {
            ""
        } else {
            sep.raw.as_str()
        };
        let mut good: Vec<Piece<'_>> = Vec::new();
        for piece in splits {
            let len = piece.chars().count();
            if (len as f64) < self.chunk_size {
                good.push((piece, len));
                continue;
            }
            if !good.is_empty() {
                out.extend(self.merge(&good, merge_sep)?);
                good.clear();
            }
            if rest.is_empty() {
                out.push(self.charge(piece.into_owned())?);
            } else {
                self.split_recursive(&piece, rest, depth + 1, out)?;
            }
        }
        if !good.is_empty() {
            out.extend(self.merge(&good, merge_sep)?);
        }
        Ok(())
    }

    /// `_split_text_with_regex(text, pattern, keep_separator)`: the non-empty pieces.
    fn split_with<'t>(&self, text: &'t str, sep: &Sep) -> Result<Vec<Cow<'t, str>>, ChunkError> {
        if sep.raw.is_empty() {
            // list(text): one piece per code point.
            return Ok(text
                .char_indices()
                .filter_map(|(i, c)| text.get(i..i + c.len_utf8()))
                .map(Cow::Borrowed)
                .collect());
        }
        let keep = self.keep != Keep::No;
        let parts: Vec<Option<&'t str>> = match &sep.regex {
            Some(Ok(re)) => pyre::split(re, text, keep)?,
            Some(Err(err)) => return Err(err.clone()),
            None => {
                let mut parts = Vec::new();
                let mut last = 0;
                for (at, m) in text.match_indices(sep.raw.as_str()) {
                    parts.push(text.get(last..at));
                    if keep {
                        parts.push(Some(m));
                    }
                    last = at + m.len();
                }
                parts.push(text.get(last..));
                parts
            }
        };
        let pieces: Vec<Option<Cow<'t, str>>> = match self.keep {
            Keep::No => parts.into_iter().map(|p| p.map(Cow::Borrowed)).collect(),
            Keep::End => {
                let n = parts.len();
                let mut pieces = Vec::with_capacity(n / 2 + 2);
                for i in (0..n.saturating_sub(1)).step_by(2) {
                    pieces.push(Some(concat(parts[i], parts[i + 1])?));
                }
                if n % 2 == 0 {
                    pieces.push(parts.last().copied().flatten().map(Cow::Borrowed));
                }
                pieces.push(parts.last().copied().flatten().map(Cow::Borrowed));
                pieces
            }
            Keep::Start => {
                let n = parts.len();
                let mut pieces = Vec::with_capacity(n / 2 + 2);
                pieces.push(parts.first().copied().flatten().map(Cow::Borrowed));
                for i in (1..n).step_by(2) {
                    let Some(&next) = parts.get(i + 1) else {
                        return Err(ChunkError::BadKwarg {
                            python: "IndexError",
                            message: "list index out of range".to_owned(),
                        });
                    };
                    pieces.push(Some(concat(parts[i], next)?));
                }
                if n % 2 == 0 {
                    pieces.push(parts.last().copied().flatten().map(Cow::Borrowed));
                }
                pieces
            }
        };
        Ok(pieces
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect())
    }

    /// `_merge_splits`: greedy chunks of at most `chunk_size` (a single longer piece becomes
    /// its own chunk), each new chunk starting with the tail of the previous one that fits in
    /// `chunk_overlap`.
    fn merge(&self, splits: &[Piece<'_>], separator: &str) -> Result<Vec<String>, ChunkError> {
        let sep_len = separator.chars().count() as i64;
        let too_big = |n: i64| n as f64 > self.chunk_size;
        let mut docs = Vec::new();
        // The current chunk is splits[lo..hi], `total` long when joined.
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut total: i64 = 0;
        for (i, (_, len)) in splits.iter().enumerate() {
            let len = *len as i64;
            let joiner = |lo: usize, hi: usize| if hi > lo { sep_len } else { 0 };
            if too_big(total + len + joiner(lo, hi)) && hi > lo {
                if let Some(doc) = self.join(&splits[lo..hi], separator) {
                    docs.push(self.charge(doc)?);
                }
                while lo < hi
                    && (total as f64 > self.chunk_overlap
                        || (too_big(total + len + joiner(lo, hi)) && total > 0))
                {
                    let first = splits[lo].1 as i64;
                    total -= first + if hi - lo > 1 { sep_len } else { 0 };
                    lo += 1;
                }
            }
            hi = i + 1;
            total += len + if hi - lo > 1 { sep_len } else { 0 };
        }
        if let Some(doc) = self.join(&splits[lo..hi], separator) {
            docs.push(self.charge(doc)?);
        }
        Ok(docs)
    }

    /// `_join_docs`: `None` for a chunk that is empty (after stripping).
    fn join(&self, pieces: &[Piece<'_>], separator: &str) -> Option<String> {
        let mut text = String::new();
        for (i, (piece, _)) in pieces.iter().enumerate() {
            if i > 0 {
                text.push_str(separator);
            }
            text.push_str(piece);
        }
        if self.strip_whitespace {
            let stripped = text.trim_matches(is_py_space);
            if stripped.len() != text.len() {
                text = stripped.to_owned();
            }
        }
        (!text.is_empty()).then_some(text)
    }

    fn check_length_function(&self) -> Result<(), ChunkError> {
        match self.length_function {
            None => Ok(()),
            Some(t) => Err(type_error(format!("'{t}' object is not callable"))),
        }
    }
}

fn with_lengths(pieces: Vec<Cow<'_, str>>) -> Vec<Piece<'_>> {
    pieces
        .into_iter()
        .map(|p| {
            let len = p.chars().count();
            (p, len)
        })
        .collect()
}

/// Python's `a + b` on two `re.split` items (a group that did not match is `None`).
fn concat<'t>(a: Option<&'t str>, b: Option<&'t str>) -> Result<Cow<'t, str>, ChunkError> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Cow::Owned(format!("{a}{b}"))),
        (None, _) => Err(type_error(
            "unsupported operand type(s) for +: 'NoneType' and 'str'".to_owned(),
        )),
        (Some(_), None) => Err(type_error(
            "can only concatenate str (not \"NoneType\") to str".to_owned(),
        )),
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

/// `str.isspace`: Unicode White_Space plus the ASCII information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn type_error(message: String) -> ChunkError {
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
