//! Recognises `pgml.embed(...)` calls in a token stream and classifies their arguments.
//! It knows PostgresML's two signatures and its argument names; it does not know clauses.

use std::ops::Range;

use crate::lexer::{string_value, Kind, Token};

/// Type OIDs the rewriter needs to know by number.
pub(crate) mod oid {
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const VARCHAR: u32 = 1043;
    pub const TEXT_ARRAY: u32 = 1009;
    pub const VARCHAR_ARRAY: u32 = 1015;
    pub const JSONB: u32 = 3802;
    pub const REAL_ARRAY: u32 = 1021;
}

/// One argument of an embed call, as far as the rewriter can evaluate it without a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgExpr {
    /// A string constant (already decoded: quotes and escapes removed).
    Literal(String),
    /// The client's `$n` parameter (1-based), possibly cast to a text type.
    Param(usize),
    /// `NULL`: the call returns NULL (STRICT).
    Null,
    /// `a || b || ...` of constants; NULL if any part is NULL.
    Concat(Vec<ArgExpr>),
    /// The argument was omitted: kwargs default to `'{}'`.
    Default,
    /// Any other expression, left to Postgres; `row_dependent` when it may read columns.
    Expr {
        /// Byte range of the expression in the input.
        span: Range<usize>,
        /// False when it only uses constants, parameters, functions and subqueries.
        row_dependent: bool,
    },
}

impl ArgExpr {
    /// True when the proxy can compute the value itself (no Postgres evaluation needed).
    pub fn is_constant(&self) -> bool {
        match self {
            ArgExpr::Literal(_) | ArgExpr::Param(_) | ArgExpr::Null | ArgExpr::Default => true,
            ArgExpr::Concat(parts) => parts.iter().all(ArgExpr::is_constant),
            ArgExpr::Expr { .. } => false,
        }
    }

    /// True when the value may differ from row to row.
    pub fn is_row_dependent(&self) -> bool {
        matches!(
            self,
            ArgExpr::Expr {
                row_dependent: true,
                ..
            }
        )
    }
}

/// One `pgml.embed(...)` call found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedCall {
    /// Byte range of the whole call, `pgml` through the closing parenthesis.
    pub span: Range<usize>,
    /// The model name argument.
    pub transformer: ArgExpr,
    /// The `text` (scalar form) or `inputs` (batch form) argument.
    pub input: ArgExpr,
    /// The kwargs argument ([`ArgExpr::Default`] when omitted).
    pub kwargs: ArgExpr,
    /// True for the `inputs text[]` form returning `SETOF real[]`.
    pub batch: bool,
    /// Token range of the call within the statement's token list.
    pub(crate) tokens: Range<usize>,
    /// Byte ranges of each argument's expression: transformer, input, kwargs (None when omitted).
    pub(crate) arg_spans: [Option<Range<usize>>; 3],
}

/// Why a `pgml.embed` call could not be understood.
pub(crate) struct BadCall;

/// Context the classifier needs: the input text, its tokens and the client's parameter types.
pub(crate) struct Source<'a> {
    pub sql: &'a str,
    pub tokens: &'a [Token],
    pub param_types: &'a [u32],
    pub standard_strings: bool,
}

impl Source<'_> {
    pub fn text(&self, i: usize) -> &str {
        &self.sql[self.tokens[i].span.clone()]
    }

    pub fn is_word(&self, i: usize, word: &str) -> bool {
        self.tokens
            .get(i)
            .is_some_and(|t| t.kind == Kind::Ident && self.text(i).eq_ignore_ascii_case(word))
    }

    /// Index of the `)` matching the `(` or `[` at `open`, if any.
    pub fn matching(&self, open: usize) -> Option<usize> {
        let mut depth = 0usize;
        for (i, t) in self.tokens.iter().enumerate().skip(open) {
            match t.kind {
                Kind::LParen | Kind::LBracket => depth += 1,
                Kind::RParen | Kind::RBracket => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn is_name(&self, i: usize, name: &str) -> bool {
        match self.tokens.get(i).map(|t| t.kind) {
            Some(Kind::Ident) => self.text(i).eq_ignore_ascii_case(name),
            Some(Kind::QuotedIdent) => {
                let t = self.text(i);
                t.len() == name.len() + 2 && &t[1..t.len() - 1] == name
            }
            _ => false,
        }
    }

    /// True when a `pgml.embed(` call starts at token `i`.
    pub fn call_starts_at(&self, i: usize) -> bool {
        self.is_name(i, "pgml")
            && self.tokens.get(i + 1).is_some_and(|t| t.kind == Kind::Dot)
            && self.is_name(i + 2, "embed")
            && self
                .tokens
                .get(i + 3)
                .is_some_and(|t| t.kind == Kind::LParen)
            && !(i > 0 && self.tokens[i - 1].kind == Kind::Dot)
    }

    fn span_of(&self, r: &Range<usize>) -> Range<usize> {
        self.tokens[r.start].span.start..self.tokens[r.end - 1].span.end
    }

    /// Parses the call starting at token `i` (see [`Source::call_starts_at`]).
    pub fn parse_call(&self, i: usize) -> Result<EmbedCall, BadCall> {
        let open = i + 3;
        let close = self.matching(open).ok_or(BadCall)?;
        let mut slots: [Option<Range<usize>>; 3] = [None, None, None];
        let mut named_batch = None;
        let mut positional = 0;
        let mut seen_named = false;
        for arg in self.split_args(open + 1, close) {
            if arg.is_empty() {
                return Err(BadCall);
            }
            let named = arg.len() > 2
                && matches!(self.tokens[arg.start].kind, Kind::Ident | Kind::QuotedIdent)
                && self.tokens[arg.start + 1].kind == Kind::Op
                && matches!(self.text(arg.start + 1), "=>" | ":=");
            let (slot, body) = if named {
                seen_named = true;
                let slot = match () {
                    _ if self.is_name(arg.start, "transformer") => 0,
                    _ if self.is_name(arg.start, "text") => {
                        named_batch = Some(false);
                        1
                    }
                    _ if self.is_name(arg.start, "inputs") => {
                        named_batch = Some(true);
                        1
                    }
                    _ if self.is_name(arg.start, "kwargs") => 2,
                    _ => return Err(BadCall),
                };
                (slot, arg.start + 2..arg.end)
            } else {
                if seen_named || positional > 2 {
                    return Err(BadCall);
                }
                positional += 1;
                (positional - 1, arg)
            };
            if slots[slot].is_some() {
                return Err(BadCall);
            }
            slots[slot] = Some(body);
        }
        let (Some(t), Some(input)) = (slots[0].clone(), slots[1].clone()) else {
            return Err(BadCall);
        };
        let batch = named_batch.unwrap_or_else(|| self.looks_like_array(&input));
        let input_role = if batch { Role::Inputs } else { Role::Text };
        Ok(EmbedCall {
            span: self.tokens[i].span.start..self.tokens[close].span.end,
            transformer: self.classify(&t, Role::Text),
            input: self.classify(&input, input_role),
            kwargs: slots[2]
                .as_ref()
                .map_or(ArgExpr::Default, |k| self.classify(k, Role::Kwargs)),
            batch,
            tokens: i..close + 1,
            arg_spans: slots.map(|s| s.map(|r| self.span_of(&r))),
        })
    }

    /// Splits the token range `from..to` at commas outside parentheses and brackets.
    fn split_args(&self, from: usize, to: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut depth = 0i32;
        let mut start = from;
        for j in from..to {
            match self.tokens[j].kind {
                Kind::LParen | Kind::LBracket => depth += 1,
                Kind::RParen | Kind::RBracket => depth -= 1,
                Kind::Comma if depth == 0 => {
                    out.push(start..j);
                    start = j + 1;
                }
                _ => {}
            }
        }
        if to > from || !out.is_empty() {
            out.push(start..to);
        }
        out
    }

    /// Positional second argument: is it `text[]` (batch form)? Mirrors Postgres' overload
    /// choice: arrays, array casts, array_agg and parameters declared as text[]; an untyped
    /// literal or parameter resolves to the `text` form.
    fn looks_like_array(&self, r: &Range<usize>) -> bool {
        let last = r.end - 1;
        if self.is_word(r.start, "array") || self.is_word(r.start, "array_agg") {
            return true;
        }
        if self.tokens[last].kind == Kind::RBracket
            && last >= 1
            && self.tokens[last - 1].kind == Kind::LBracket
        {
            return true;
        }
        if r.len() == 1 && self.tokens[r.start].kind == Kind::Param {
            return self
                .param_oid(r.start)
                .is_some_and(|o| o == oid::TEXT_ARRAY || o == oid::VARCHAR_ARRAY);
        }
        false
    }

    /// The client-declared type of the `$n` parameter at token `i` (None when unspecified).
    pub fn param_oid(&self, i: usize) -> Option<u32> {
        let n = self.param_number(i)?;
        self.param_types.get(n - 1).copied().filter(|&o| o != 0)
    }

    pub fn param_number(&self, i: usize) -> Option<usize> {
        self.text(i)[1..].parse::<usize>().ok().filter(|&n| n > 0)
    }

    fn classify(&self, r: &Range<usize>, role: Role) -> ArgExpr {
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
enum Role {
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
