//! Recognises `SELECT * FROM pgml.load_dataset(...)` (and `SELECT pgml.load_dataset(...)`)
//! with constant arguments, the call shapes PostgresML users send; the proxy executes it.

use crate::lexer::{Kind, Token};
use crate::literal::string_value;

/// A `pgml.load_dataset(source, subset, "limit", kwargs)` call with its constant arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadDatasetCall {
    /// Dataset name, hub id or local path.
    pub source: String,
    /// Subset (configuration) name.
    pub subset: Option<String>,
    /// Row limit.
    pub limit: Option<i64>,
    /// kwargs JSON text (`{}` when omitted).
    pub kwargs: String,
    /// True for `SELECT * FROM pgml.load_dataset(...)` (two columns), false for the
    /// composite-returning `SELECT pgml.load_dataset(...)`.
    pub star: bool,
}

#[derive(Clone)]
enum Value {
    Text(String),
    Number(i64),
    Null,
}

const PARAMS: [&str; 4] = ["source", "subset", "limit", "kwargs"];

/// The call when `sql` is exactly one such statement (an optional trailing `;`), else None.
#[cfg(test)]
fn parse_load_dataset(sql: &str, standard_conforming_strings: bool) -> Option<LoadDatasetCall> {
    let lexed = crate::lexer::lex(sql, standard_conforming_strings);
    if lexed.unterminated || lexed.truncated {
        return None;
    }
    recognise(sql, &lexed.tokens, standard_conforming_strings)
}

/// The call when the lexed (and terminated) text is exactly one such statement, else None.
pub(crate) fn recognise(
    sql: &str,
    t: &[Token],
    standard_conforming_strings: bool,
) -> Option<LoadDatasetCall> {
    let text = |i: usize| t.get(i).map(|tok| &sql[tok.span.clone()]);
    let word = |i: usize, w: &str| {
        t.get(i).is_some_and(|tok| match tok.kind {
            Kind::Ident => sql[tok.span.clone()].eq_ignore_ascii_case(w),
            Kind::QuotedIdent => sql[tok.span.clone()] == format!("\"{w}\""),
            _ => false,
        })
    };
    let kind = |i: usize| t.get(i).map(|tok| tok.kind);
    if !word(0, "select") {
        return None;
    }
    let (star, mut i) = if text(1) == Some("*") && word(2, "from") {
        (true, 3)
    } else {
        (false, 1)
    };
    if !(word(i, "pgml")
        && kind(i + 1) == Some(Kind::Dot)
        && word(i + 2, "load_dataset")
        && kind(i + 3) == Some(Kind::LParen))
    {
        return None;
    }
    i += 4;
    let mut values: [Option<Value>; 4] = [None, None, None, None];
    let mut position = 0;
    loop {
        if kind(i) == Some(Kind::RParen) && position == 0 && values.iter().all(Option::is_none) {
            break;
        }
        // Named argument?
        let slot = if matches!(kind(i), Some(Kind::Ident | Kind::QuotedIdent))
            && matches!(text(i + 1), Some("=>" | ":="))
        {
            let name = text(i)?.trim_matches('"').to_ascii_lowercase();
            let slot = PARAMS.iter().position(|p| *p == name)?;
            i += 2;
            slot
        } else {
            let slot = position;
            position += 1;
            slot
        };
        if slot >= PARAMS.len() || values[slot].is_some() {
            return None;
        }
        let value = match kind(i)? {
            Kind::Str(_) => Value::Text(string_value(sql, &t[i], standard_conforming_strings)?),
            Kind::Number => Value::Number(text(i)?.parse().ok()?),
            Kind::Ident if word(i, "null") => Value::Null,
            _ => return None,
        };
        i += 1;
        // An optional cast to a simple type name (`::jsonb`, `::text`, `::bigint`).
        if kind(i) == Some(Kind::Cast) && kind(i + 1) == Some(Kind::Ident) {
            i += 2;
        }
        values[slot] = Some(value);
        match kind(i)? {
            Kind::Comma => i += 1,
            Kind::RParen => break,
            _ => return None,
        }
    }
    i += 1;
    if kind(i) == Some(Kind::Semicolon) {
        i += 1;
    }
    if i != t.len() {
        return None;
    }
    let [source, subset, limit, kwargs] = values;
    let source = match source? {
        Value::Text(s) => s,
        _ => return None,
    };
    let subset = match subset {
        None | Some(Value::Null) => None,
        Some(Value::Text(s)) => Some(s),
        Some(Value::Number(_)) => return None,
    };
    let limit = match limit {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n),
        Some(Value::Text(s)) => Some(s.trim().parse().ok()?),
    };
    let kwargs = match kwargs {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::Text(s)) => s,
        Some(Value::Number(_)) => return None,
    };
    Some(LoadDatasetCall {
        source,
        subset,
        limit,
        kwargs,
        star,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn article_call_is_recognised() {
        let call = parse_load_dataset(
            "SELECT *\nFROM pgml.load_dataset('amazon_us_reviews', 'Video_DVD_v1_00');",
            true,
        )
        .unwrap();
        assert_eq!(call.source, "amazon_us_reviews");
        assert_eq!(call.subset.as_deref(), Some("Video_DVD_v1_00"));
        assert_eq!(call.limit, None);
        assert_eq!(call.kwargs, "{}");
        assert!(call.star);
    }

    #[test]
    fn named_arguments_limit_and_kwargs() {
        let call = parse_load_dataset(
            "select * from PGML.LOAD_DATASET(source => 'reviews_sample', \"limit\" => 100, kwargs => '{\"split\": \"train\"}'::jsonb)",
            true,
        )
        .unwrap();
        assert_eq!(call.source, "reviews_sample");
        assert_eq!(call.subset, None);
        assert_eq!(call.limit, Some(100));
        assert_eq!(call.kwargs, "{\"split\": \"train\"}");
        let call = parse_load_dataset("SELECT pgml.load_dataset('iris', NULL, 5)", true).unwrap();
        assert!(!call.star);
        assert_eq!(call.limit, Some(5));
    }

    #[test]
    fn other_statements_are_not_calls() {
        for sql in [
            "SELECT * FROM pgml.load_dataset(source)",
            "SELECT * FROM pgml.load_dataset('a') WHERE true",
            "SELECT 1; SELECT * FROM pgml.load_dataset('a')",
            "SELECT * FROM pgml.load_dataset('a', 'b', 1, '{}', 5)",
            "SELECT * FROM pgml.embed('m', 'x')",
            "SELECT 'pgml.load_dataset(''a'')'",
        ] {
            assert_eq!(parse_load_dataset(sql, true), None, "{sql}");
        }
    }
}
