//! Where a call sits in its statement: the clause governing it, whether it is used as a
//! table, and whether it forms a whole select item (so its column must keep the name `embed`).

use crate::call::EmbedCall;
use crate::lexer::Kind;
use crate::source::Source;

/// Clause keywords that matter for telling what a call's neighbourhood is.
const CLAUSE_WORDS: &[&str] = &[
    "select",
    "from",
    "join",
    "lateral",
    "where",
    "on",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "set",
    "values",
    "returning",
    "using",
    "window",
];

/// The clause keyword governing token `at`, at the same paren depth, and the token before `at`.
fn governing_clause(src: &Source, stmt_start: usize, at: usize) -> Option<usize> {
    let mut depth = 0i32;
    for i in (stmt_start..at).rev() {
        match src.tokens[i].kind {
            Kind::RParen | Kind::RBracket => depth += 1,
            Kind::LParen | Kind::LBracket => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
            }
            Kind::Ident if depth == 0 && CLAUSE_WORDS.iter().any(|w| src.is_word(i, w)) => {
                return Some(i)
            }
            _ => {}
        }
    }
    None
}

/// A call used as a table (`FROM pgml.embed(...)`) cannot be replaced by a literal.
pub(crate) fn in_from_position(src: &Source, stmt_start: usize, at: usize) -> bool {
    let Some(kw) = governing_clause(src, stmt_start, at) else {
        return false;
    };
    let table_clause = ["from", "join", "lateral", "using"]
        .iter()
        .any(|w| src.is_word(kw, w));
    table_clause && (kw + 1 == at || src.tokens[at - 1].kind == Kind::Comma)
}

/// A call that forms a whole select-list item (optionally cast) names its column `embed`;
/// a spliced literal would be named after its type, so the plan adds ` AS embed`.
pub(crate) fn keeps_embed_name(src: &Source, stmt_start: usize, call: &EmbedCall) -> Option<usize> {
    let kw = governing_clause(src, stmt_start, call.tokens.start)?;
    if !(src.is_word(kw, "select") || src.is_word(kw, "returning")) {
        return None;
    }
    let before = call.tokens.start - 1;
    let starts_item = before == kw
        || src.tokens[before].kind == Kind::Comma
        || src.is_word(before, "distinct")
        || src.is_word(before, "all");
    if !starts_item {
        return None;
    }
    // Only `::type` suffixes may follow before the item ends.
    let mut j = call.tokens.end;
    loop {
        match src.tokens.get(j).map(|t| t.kind) {
            Some(Kind::Cast) => {
                j += 1;
                if !matches!(
                    src.tokens.get(j).map(|t| t.kind),
                    Some(Kind::Ident | Kind::QuotedIdent)
                ) {
                    return None;
                }
                j += 1;
                while src.tokens.get(j).map(|t| t.kind) == Some(Kind::Dot) {
                    j += 2;
                }
                if src.tokens.get(j).map(|t| t.kind) == Some(Kind::LParen) {
                    match src.matching(j) {
                        Some(c) => j = c + 1,
                        None => return None,
                    }
                }
                while src.tokens.get(j).map(|t| t.kind) == Some(Kind::LBracket) {
                    match src.matching(j) {
                        Some(c) => j = c + 1,
                        None => return None,
                    }
                }
            }
            None | Some(Kind::Comma | Kind::RParen | Kind::Semicolon) => {
                return Some(src.tokens[j - 1].span.end)
            }
            Some(Kind::Ident) => {
                let ends = [
                    "from",
                    "where",
                    "group",
                    "having",
                    "order",
                    "limit",
                    "offset",
                    "window",
                    "union",
                    "intersect",
                    "except",
                    "into",
                    "for",
                    "fetch",
                ]
                .iter()
                .any(|w| src.is_word(j, w));
                return ends.then(|| src.tokens[j - 1].span.end);
            }
            _ => return None,
        }
    }
}
