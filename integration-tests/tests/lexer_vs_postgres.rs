//! The rewriter's lexer against Postgres' own scanner, on generated SQL texts: SELECTs of
//! numbers and string constants of every flavour (with continuations), aliases and row
//! constructors, with whitespace and comments between tokens, sometimes cut short. Postgres
//! either runs a text, and then each statement's column count must be what the lexer's
//! top-level semicolons and commas say, or rejects it, and then its error position must be
//! where the lexer also starts a token (or the lexer must also find it unterminated).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::{Client, SimpleQueryMessage};

use pgml_integration_tests::{connect, stack};

/// Generated texts per run: enough to meet every piece in many neighbourhoods, few enough
/// for `make test` (one round trip each).
const CASES: u32 = 256;

/// Whitespace and comments between two tokens; sometimes nothing at all.
fn gap() -> impl Strategy<Value = String> {
    let line = "[a-z ;,'\"$*/-]{0,5}";
    let block = "[a-z ;,'\"$\r\n-]{0,5}";
    let piece = prop_oneof![
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\t".to_owned()),
        line.prop_map(|c| format!("--{c}\n")),
        line.prop_map(|c| format!("--{c}\r")),
        block.prop_map(|c| format!("/*{c}*/")),
        (block, block).prop_map(|(a, b)| format!("/*{a}/*{b}*/*/")),
    ];
    prop_oneof![
        1 => Just(String::new()),
        6 => prop::collection::vec(piece, 1..3).prop_map(|v| v.concat()),
    ]
}

/// A body made of `pieces`, each a whole escape or character so any concatenation is valid.
fn body(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pieces), 0..6).prop_map(|v| v.concat())
}

const PLAIN: &[&str] = &[
    "a", "Z", " ", ";", ",", "--", "/*", "*/", "\"", "$", "é", "''",
];
const STANDARD: &[&str] = &["a", ";", ",", "--", "/*", "\"", "$$", "\\", "é", "''", "\n"];
const ESCAPE: &[&str] = &[
    "a", ";", ",", "''", "\\'", "\\\\", "\\n", "\\\"", "--", "/*",
];
const BITS: &[&str] = &["0", "1", "01"];
const HEX: &[&str] = &["0", "9", "a", "F"];
const UNICODE: &[&str] = &["a", ";", ",", "''", "\\0041", "\\+000042", "\\\\", "--"];
const UNICODE_BANG: &[&str] = &["a", ";", "''", "!0041", "!!", "\\", "/*"];

/// Whitespace with a newline between the parts of a continued string constant.
fn continuation_gap() -> impl Strategy<Value = String> {
    prop::sample::select(&["\n", "\r", " \n\t", "--c;\n", " -- ,'\r\n", "\n--x\n"][..])
        .prop_map(str::to_owned)
}

/// A string constant `prefix'...'` whose parts (more than one when continued) use `pieces`.
fn quoted(prefix: &'static str, pieces: &'static [&'static str]) -> BoxedStrategy<String> {
    (
        body(pieces),
        prop::collection::vec((continuation_gap(), body(pieces)), 0..2),
    )
        .prop_map(move |(first, more)| {
            let mut s = format!("{prefix}'{first}'");
            for (gap, part) in more {
                s.push_str(&format!("{gap}'{part}'"));
            }
            s
        })
        .boxed()
}

fn dollar_quoted() -> impl Strategy<Value = String> {
    let tag = prop::sample::select(&["", "t", "_q1", "é"][..]);
    let pieces = &["a", "$", "$t", "$x$", "'", ";", ",", "--", "/*", "\n"][..];
    (tag, body(pieces)).prop_map(|(tag, b)| format!("${tag}${b}${tag}$"))
}

fn string_constant() -> BoxedStrategy<String> {
    prop_oneof![
        quoted("", STANDARD),
        quoted("E", ESCAPE),
        quoted("n", STANDARD),
        quoted("B", BITS),
        quoted("x", HEX),
        // A doubled quote ends a bit or hex string in Postgres (a syntax error follows).
        quoted("b", &["1", "''"]),
        quoted("X", &["F", "''"]),
        quoted("U&", UNICODE),
        quoted("u&", UNICODE_BANG).prop_map(|s| format!("{s} UESCAPE '!'")),
        dollar_quoted(),
    ]
    .boxed()
}

fn number() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "0", "42", "1.5", ".5", "7.", "1e3", "2.5E-3", "0x1F", "1_000",
        ][..],
    )
    .prop_map(str::to_owned)
}

/// Column alias, as a single token.
fn alias() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_$]{0,4}",
        body(PLAIN).prop_map(|b| format!("\"{}\"", b.replace('"', "\"\""))),
        body(&["a", ";", ",", "\\0041", "--"]).prop_map(|b| format!("U&\"{b}\"")),
    ]
}

/// One SELECT-list item as tokens: a constant, maybe aliased, or a row of two constants.
fn item() -> impl Strategy<Value = Vec<String>> {
    let scalar = prop_oneof![number(), string_constant()];
    prop_oneof![
        3 => scalar.clone().prop_map(|s| vec![s]),
        1 => (scalar.clone(), alias()).prop_map(|(s, a)| vec![s, "AS".into(), a]),
        1 => (scalar.clone(), scalar).prop_map(|(a, b)| vec!["(".into(), a, ",".into(), b, ")".into()]),
    ]
}

/// One case: a text of statements with gaps between all tokens, maybe cut short, and the
/// session's standard_conforming_strings.
fn case() -> impl Strategy<Value = (String, bool)> {
    let statement = prop::collection::vec(item(), 1..4).prop_map(|items| {
        let mut toks = vec!["SELECT".to_owned()];
        for (n, item) in items.into_iter().enumerate() {
            if n > 0 {
                toks.push(",".into());
            }
            toks.extend(item);
        }
        toks
    });
    (
        prop::collection::vec(statement, 1..4),
        prop::collection::vec(gap(), 64),
        prop::bool::weighted(0.1),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(statements, gaps, trailing_semicolon, cut, standard)| {
            let mut toks: Vec<String> = statements.join(&";".to_owned());
            if trailing_semicolon {
                toks.push(";".into());
            }
            let mut text = String::new();
            for (n, tok) in toks.iter().enumerate() {
                text.push_str(&gaps[n % gaps.len()]);
                text.push_str(tok);
            }
            if cut.index(8) == 0 {
                let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
                text.truncate(ends[cut.index(ends.len())]);
            }
            (text, standard)
        })
}

/// Column count of each non-empty statement, split at the lexer's `;` and top-level `,`
/// (a bare `SELECT` has none).
fn lexer_columns(text: &str, tokens: &[std::ops::Range<usize>]) -> Vec<usize> {
    let mut out = Vec::new();
    for statement in tokens.split(|t| &text[t.clone()] == ";") {
        let mut depth = 0;
        let mut columns = usize::from(statement.len() > 1);
        for t in statement {
            match &text[t.clone()] {
                "(" => depth += 1,
                ")" => depth -= 1,
                "," if depth == 0 => columns += 1,
                _ => {}
            }
        }
        if !statement.is_empty() {
            out.push(columns);
        }
    }
    out
}

/// Byte offset of Postgres' 1-based character position in `text`.
fn byte_offset(text: &str, position: u32) -> usize {
    let chars = position.saturating_sub(1) as usize;
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i)
}

async fn check(client: &Client, text: &str, standard: bool) -> Result<(), TestCaseError> {
    let setting = if standard { "on" } else { "off" };
    client
        .simple_query(&format!("SET standard_conforming_strings = {setting}"))
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (tokens, unterminated) = pgml_rewriter::token_spans(text, standard);
    let listed = || tokens.iter().map(|t| &text[t.clone()]).collect::<Vec<_>>();
    let db = match client.simple_query(text).await {
        Ok(messages) => {
            let columns: Vec<usize> = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::RowDescription(cols) => Some(cols.len()),
                    _ => None,
                })
                .collect();
            prop_assert!(
                !unterminated,
                "Postgres ran a text the lexer finds unterminated"
            );
            prop_assert_eq!(
                lexer_columns(text, &tokens),
                columns,
                "column counts differ"
            );
            return Ok(());
        }
        Err(e) => e
            .as_db_error()
            .cloned()
            .ok_or_else(|| TestCaseError::fail(e.to_string()))?,
    };
    // Every error the generated texts meet (syntax, a column a cut text names) points at the
    // start of the token it is about.
    let Some(ErrorPosition::Original(position)) = db.position() else {
        return Err(TestCaseError::fail(format!(
            "no position: {} {}",
            db.code().code(),
            db.message()
        )));
    };
    let at = byte_offset(text, *position);
    // The parser stops at the first error, so a text the lexer finds unterminated may fail
    // earlier in Postgres; an unterminated comment is no token.
    if db.message().starts_with("unterminated") {
        prop_assert!(unterminated, "Postgres: {}", db.message());
    }
    if db.message().ends_with("at end of input") {
        let last_end = tokens.last().map_or(0, |t| t.end);
        prop_assert!(
            last_end <= at,
            "tokens after Postgres' end of input: {:?}",
            listed()
        );
    } else if !db.message().starts_with("unterminated /* comment") {
        prop_assert!(
            tokens.iter().any(|t| t.start == at),
            "Postgres' error `{}` at byte {} starts no token of {:?}",
            db.message(),
            at,
            listed()
        );
    }
    Ok(())
}

#[test]
fn lexer_token_boundaries_match_postgres_on_generated_sql() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(connect(&stack().direct_url())).unwrap();
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |(text, standard)| {
        rt.block_on(check(&client, &text, standard))
            .map_err(|e| TestCaseError::fail(format!("{e}\n  text: {text:?}, scs {standard}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
