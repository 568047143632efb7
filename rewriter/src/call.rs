//! Recognises `pgml.embed(...)` calls in a token stream and classifies their arguments.
//! It knows PostgresML's two signatures and its argument names; it does not know clauses.

use std::ops::Range;

use crate::classify::Role;
use crate::lexer::Kind;
use crate::source::Source;

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

/// Which PostgresML function a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallFunction {
    /// `pgml.embed(transformer, text | inputs, kwargs)`.
    Embed,
    /// `pgml.chunk(splitter, text, kwargs)`: set-returning, never spliced as a constant; the
    /// prefetch carries its arguments (the splitter in the transformer slot).
    Chunk,
    /// `pgml.transform(task, args, inputs, cache)`: planned only when an argument reads
    /// columns (a constant call is left to the shim's upcall). Its argument list is kept
    /// whole (`arg_spans[0]`); the prefetch reads each row's request with
    /// `pgml_proxy.transform_key`, which has pgml.transform's overloads.
    Transform,
}

impl CallFunction {
    /// The one-letter tag of the function in a prefetch query's first column.
    pub fn tag(self) -> &'static str {
        match self {
            CallFunction::Embed => "e",
            CallFunction::Chunk => "c",
            CallFunction::Transform => "t",
        }
    }
}

/// One `pgml.embed(...)` or `pgml.chunk(...)` call found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedCall {
    /// The function called.
    pub function: CallFunction,
    /// Byte range of the whole call, `pgml` through the closing parenthesis.
    pub span: Range<usize>,
    /// The model name argument (pgml.chunk: the splitter name).
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

impl Source<'_> {
    /// Parses the call starting at token `i` (see [`Source::call_starts_at`]).
    pub fn parse_call(&self, i: usize) -> Result<EmbedCall, BadCall> {
        let function = if self.is_name(i + 2, "chunk") {
            CallFunction::Chunk
        } else if self.is_name(i + 2, "transform") {
            return self.parse_transform(i);
        } else {
            CallFunction::Embed
        };
        let first_name = if function == CallFunction::Chunk {
            "splitter"
        } else {
            "transformer"
        };
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
            let named = self.is_named_arg(&arg);
            let (slot, body) = if named {
                seen_named = true;
                let slot = match () {
                    _ if self.is_name(arg.start, first_name) => 0,
                    _ if self.is_name(arg.start, "text") => {
                        named_batch = Some(false);
                        1
                    }
                    _ if function == CallFunction::Embed && self.is_name(arg.start, "inputs") => {
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
        let batch = function == CallFunction::Embed
            && named_batch.unwrap_or_else(|| self.looks_like_array(&input));
        let input_role = if batch { Role::Inputs } else { Role::Text };
        Ok(EmbedCall {
            function,
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

    /// A `pgml.transform(...)` call at token `i`: PostgresML's argument names (task, args,
    /// inputs, cache), at most four, named after positional ones; the task is required.
    /// Row-dependent when any argument reads columns; the list is kept whole in
    /// `transformer` and `arg_spans[0]`.
    fn parse_transform(&self, i: usize) -> Result<EmbedCall, BadCall> {
        const NAMES: [&str; 4] = ["task", "args", "inputs", "cache"];
        let open = i + 3;
        let close = self.matching(open).ok_or(BadCall)?;
        let args = self.split_args(open + 1, close);
        if args.is_empty() || args.len() > NAMES.len() {
            return Err(BadCall);
        }
        let mut seen = [false; 4];
        let mut seen_named = false;
        let mut row_dependent = false;
        for (position, arg) in args.iter().enumerate() {
            if arg.is_empty() {
                return Err(BadCall);
            }
            let named = self.is_named_arg(arg);
            let (slot, body) = if named {
                seen_named = true;
                let slot = NAMES
                    .iter()
                    .position(|n| self.is_name(arg.start, n))
                    .ok_or(BadCall)?;
                (slot, arg.start + 2..arg.end)
            } else if seen_named {
                return Err(BadCall);
            } else {
                (position, arg.clone())
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(BadCall);
            }
            row_dependent |= self.row_dependent(body);
        }
        if !seen[0] {
            return Err(BadCall);
        }
        let list = open + 1..close;
        let span = self.span_of(&list);
        Ok(EmbedCall {
            function: CallFunction::Transform,
            span: self.tokens[i].span.start..self.tokens[close].span.end,
            transformer: ArgExpr::Expr {
                span: span.clone(),
                row_dependent,
            },
            input: ArgExpr::Default,
            kwargs: ArgExpr::Default,
            batch: false,
            tokens: i..close + 1,
            arg_spans: [Some(span), None, None],
        })
    }

    /// True when the argument `arg` (a token range) is `name => value` or `name := value`.
    fn is_named_arg(&self, arg: &Range<usize>) -> bool {
        arg.len() > 2
            && matches!(self.tokens[arg.start].kind, Kind::Ident | Kind::QuotedIdent)
            && self.tokens[arg.start + 1].kind == Kind::Op
            && matches!(self.text(arg.start + 1), "=>" | ":=")
    }

    /// Splits the token range `from..to` at commas outside parentheses and brackets.
    pub fn split_args(&self, from: usize, to: usize) -> Vec<Range<usize>> {
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
    pub fn looks_like_array(&self, r: &Range<usize>) -> bool {
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
}
