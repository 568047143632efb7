//! Classifies one argument of an embed call: a constant the proxy can evaluate (literal,
//! parameter, NULL, concatenation) or an expression left to Postgres, row-dependent or not.

use std::ops::Range;

use crate::call::{oid, ArgExpr};
use crate::lexer::Kind;
use crate::literal::string_value;
use crate::source::Source;

impl Source<'_> {
    pub fn classify(&self, r: &Range<usize>, role: Role) -> ArgExpr {
        let fallback = || ArgExpr::Expr {
            span: self.span_of(r),
            row_dependent: self.row_dependent(r.clone()),
        };
        if role == Role::Inputs {
            return fallback();
        }
        let mut r = r.clone();
        loop {
            // Strip casts that keep the text unchanged, and redundant parentheses.
            if r.len() >= 3
                && self.tokens[r.end - 2].kind == Kind::Cast
                && role.accepts_cast(self.text(r.end - 1))
            {
                r.end -= 2;
            } else if r.len() >= 2
                && self.tokens[r.start].kind == Kind::LParen
                && self.matching(r.start) == Some(r.end - 1)
            {
                r = r.start + 1..r.end - 1;
            } else {
                break;
            }
        }
        let parts: Vec<Range<usize>> = {
            let mut parts = Vec::new();
            let mut start = r.start;
            let mut depth = 0i32;
            for j in r.clone() {
                match self.tokens[j].kind {
                    Kind::LParen | Kind::LBracket => depth += 1,
                    Kind::RParen | Kind::RBracket => depth -= 1,
                    Kind::Op if depth == 0 && self.text(j) == "||" => {
                        parts.push(start..j);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            parts.push(start..r.end);
            parts
        };
        if parts.len() > 1 {
            if role == Role::Kwargs {
                return fallback();
            }
            let mut out = Vec::with_capacity(parts.len());
            for p in &parts {
                if p.is_empty() {
                    return fallback();
                }
                match self.classify(p, Role::Text) {
                    e @ (ArgExpr::Literal(_) | ArgExpr::Param(_) | ArgExpr::Null) => out.push(e),
                    _ => return fallback(),
                }
            }
            return ArgExpr::Concat(out);
        }
        if r.len() != 1 {
            return fallback();
        }
        let tok = &self.tokens[r.start];
        match tok.kind {
            Kind::Str(_) => string_value(self.sql, tok, self.standard_strings)
                .map_or_else(fallback, ArgExpr::Literal),
            Kind::Param => match (self.param_number(r.start), self.param_oid(r.start)) {
                (Some(n), None) => ArgExpr::Param(n),
                (Some(n), Some(o)) if role.accepts_oid(o) => ArgExpr::Param(n),
                _ => fallback(),
            },
            Kind::Ident if self.text(r.start).eq_ignore_ascii_case("null") => ArgExpr::Null,
            _ => fallback(),
        }
    }

    /// Conservative: any identifier that is not a function name, a type name or a known
    /// row-independent keyword counts as a column reference. Subqueries are assumed
    /// uncorrelated (korvus passes the model as `(SELECT ... FROM pipeline)`).
    pub fn row_dependent(&self, r: Range<usize>) -> bool {
        let mut j = r.start;
        while j < r.end {
            let t = &self.tokens[j];
            match t.kind {
                Kind::LParen
                    if ["select", "with", "values"]
                        .iter()
                        .any(|w| self.is_word(j + 1, w)) =>
                {
                    match self.matching(j) {
                        Some(close) => j = close + 1,
                        None => return true,
                    }
                    continue;
                }
                Kind::Cast => {
                    j += 1;
                    while j < r.end
                        && matches!(
                            self.tokens[j].kind,
                            Kind::Ident | Kind::QuotedIdent | Kind::Dot
                        )
                    {
                        j += 1;
                    }
                    continue;
                }
                Kind::Ident | Kind::QuotedIdent => {
                    let mut end = j + 1;
                    while end + 1 < r.end
                        && self.tokens[end].kind == Kind::Dot
                        && matches!(self.tokens[end + 1].kind, Kind::Ident | Kind::QuotedIdent)
                    {
                        end += 2;
                    }
                    let is_function = end < r.end && self.tokens[end].kind == Kind::LParen;
                    let after_as = j > r.start && self.is_word(j - 1, "as");
                    // `date '2024-01-01'`: a type name before a string constant.
                    let typed_literal = end == j + 1
                        && self
                            .tokens
                            .get(end)
                            .is_some_and(|t| matches!(t.kind, Kind::Str(_)));
                    let keyword = t.kind == Kind::Ident
                        && end == j + 1
                        && ROW_INDEPENDENT_WORDS
                            .iter()
                            .any(|w| self.text(j).eq_ignore_ascii_case(w));
                    if !(is_function || after_as || keyword || typed_literal) {
                        return true;
                    }
                    j = end;
                    continue;
                }
                _ => {}
            }
            j += 1;
        }
        false
    }
}

const ROW_INDEPENDENT_WORDS: &[&str] = &[
    "null",
    "true",
    "false",
    "array",
    "and",
    "or",
    "not",
    "is",
    "as",
    "case",
    "when",
    "then",
    "else",
    "end",
    "in",
    "like",
    "ilike",
    "similar",
    "to",
    "between",
    "symmetric",
    "distinct",
    "from",
    "escape",
    "any",
    "all",
    "some",
    "collate",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_schema",
    "current_catalog",
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Text,
    Inputs,
    Kwargs,
}

impl Role {
    fn accepts_cast(self, ty: &str) -> bool {
        let text_like = ["text", "varchar"]
            .iter()
            .any(|t| ty.eq_ignore_ascii_case(t));
        match self {
            Role::Text => text_like,
            Role::Kwargs => {
                text_like || ["jsonb", "json"].iter().any(|t| ty.eq_ignore_ascii_case(t))
            }
            Role::Inputs => false,
        }
    }

    fn accepts_oid(self, o: u32) -> bool {
        match self {
            Role::Text => o == oid::TEXT || o == oid::VARCHAR,
            Role::Kwargs => [oid::TEXT, oid::VARCHAR, oid::JSON, oid::JSONB].contains(&o),
            Role::Inputs => false,
        }
    }
}
