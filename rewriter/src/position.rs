//! Where a call sits in its statement: the clause governing it, whether it is used as a
//! table, and whether it forms a whole select item (so its column must keep the name `embed`).

use std::ops::Range;

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

/// Per call (in text order, not nested): the clause keyword governing it at its own paren
/// depth, None when a paren opens after the last one. One forward pass over the statement,
/// so a select list of thousands of calls stays linear.
pub(crate) fn governing_clauses(
    src: &Source,
    stmt: Range<usize>,
    calls: &[EmbedCall],
) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(calls.len());
    let mut next = calls.iter().map(|c| c.tokens.start).peekable();
    // The latest clause keyword per open paren level; parens are balanced (sqlparser
    // accepted the statement) and at most MAX_NESTING deep.
    let mut levels: Vec<Option<usize>> = vec![None];
    for i in stmt {
        while next.next_if_eq(&i).is_some() {
            out.push(levels.last().copied().flatten());
        }
        match src.tokens[i].kind {
            Kind::LParen | Kind::LBracket => levels.push(None),
            Kind::RParen | Kind::RBracket if levels.len() > 1 => {
                levels.pop();
            }
            Kind::Ident if CLAUSE_WORDS.iter().any(|w| src.is_word(i, w)) => {
                if let Some(top) = levels.last_mut() {
                    *top = Some(i);
                }
            }
            _ => {}
        }
    }
    out.resize(calls.len(), None);
    out
}

/// A call used as a table (`FROM pgml.embed(...)`) cannot be replaced by a literal. `kw` is
/// the call's governing clause (see [`governing_clauses`]).
pub(crate) fn in_from_position(src: &Source, kw: Option<usize>, at: usize) -> bool {
    let Some(kw) = kw else {
        return false;
    };
    let table_clause = ["from", "join", "lateral", "using"]
        .iter()
        .any(|w| src.is_word(kw, w));
    table_clause && (kw + 1 == at || src.tokens[at - 1].kind == Kind::Comma)
}

/// A call that forms a whole select-list item (optionally cast) names its column `embed`;
/// a spliced literal would be named after its type, so the plan adds ` AS embed`.
pub(crate) fn keeps_embed_name(src: &Source, kw: Option<usize>, call: &EmbedCall) -> Option<usize> {
    let kw = kw?;
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
