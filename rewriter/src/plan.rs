//! The planner: per statement, decides whether the proxy computes the embeddings itself
//! (constant arguments), prefetches them (row-dependent arguments) or passes the statement
//! through to the upstream shim, and renders constant plans by splicing the original text.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::call::{oid, ArgExpr, EmbedCall, Source};
use crate::lexer::{lex, Kind};
use crate::quote::push_real_array_literal;
use crate::{prefetch, statement};

/// Session settings that change how SQL text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// The session's `standard_conforming_strings` (on by default since Postgres 9.1).
    pub standard_conforming_strings: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            standard_conforming_strings: true,
        }
    }
}

/// The plan for a simple-protocol Query string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryPlan {
    /// Every statement of the string, in order; empty when the text has no `pgml` at all
    /// (the fast path: nothing to do, nothing allocated).
    pub statements: Vec<PlannedStatement>,
}

/// One statement of a Query string and its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStatement {
    /// Byte range of the statement in the input (first token to last, no `;`).
    pub span: Range<usize>,
    /// What to do with it.
    pub plan: StatementPlan,
}

/// What the proxy does with one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementPlan {
    /// No `pgml.embed` call: forward as is.
    Unchanged,
    /// Every call has constant arguments: compute them and splice the results.
    Constant(ConstantPlan),
    /// Row-dependent arguments: run the prefetch query, then the statement unchanged.
    Prefetch(PrefetchPlan),
    /// Forward as is; the upstream shim serves the calls (upcall).
    PassThrough {
        /// Why the rewriter declined.
        reason: PassThroughReason,
    },
}

/// Why a statement with `pgml.embed` in it is passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassThroughReason {
    /// The call is inside a server-side body (DO, CREATE FUNCTION/PROCEDURE/TRIGGER).
    ServerSideBody,
    /// A statement kind the rewriter does not rewrite (DDL, views, PREPARE, COPY, ...).
    UnsupportedStatement,
    /// sqlparser cannot parse it, or the text is unterminated.
    Unparseable,
    /// A call whose arguments do not match either PostgresML signature (Postgres will say so).
    UnsupportedCall,
    /// Row-dependent call in a position the prefetch cannot cover exactly (WHERE, JOIN,
    /// subqueries, set operations, GROUP BY on aggregates...).
    UnsupportedPosition,
    /// A data-modifying CTE: a prefetch query would execute it twice.
    DataModifyingCte,
    /// An embed call nested in another's arguments.
    NestedCall,
    /// More than one statement in an extended-protocol Parse (Postgres rejects it).
    MultipleStatements,
}

/// A statement whose every embed call has constant arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstantPlan {
    calls: Vec<EmbedCall>,
    /// Per call: where to append ` AS embed` so the output column keeps the name `embed`.
    keep_name: Vec<Option<usize>>,
    /// Client parameters that only occur inside calls, with the type Postgres would infer.
    hidden_params: Vec<(usize, u32)>,
    /// Highest `$n` in the statement.
    max_param: usize,
}

/// A statement with row-dependent calls: prefetch, then run it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchPlan {
    /// SQL returning the DISTINCT non-NULL rows `(t text, i text, k text)`: transformer,
    /// input and kwargs normalised as `kwargs::jsonb::text`, one row per batch element. It may
    /// reference the client's `$n` parameters (bind the same values).
    pub query: String,
    /// The calls it covers, in text order.
    pub calls: Vec<EmbedCall>,
}

/// Plans a simple-protocol Query string (one or more statements).
pub fn plan_query(sql: &str) -> QueryPlan {
    plan_query_with(sql, PlanOptions::default())
}

/// [`plan_query`] with explicit session settings.
pub fn plan_query_with(sql: &str, opts: PlanOptions) -> QueryPlan {
    if !mentions_pgml(sql) {
        return QueryPlan::default();
    }
    let lexed = lex(sql, opts.standard_conforming_strings);
    let src = Source {
        sql,
        tokens: &lexed.tokens,
        param_types: &[],
        standard_strings: opts.standard_conforming_strings,
    };
    let statements = statement::split(sql, &lexed.tokens)
        .into_iter()
        .map(|r| {
            let last = r.end == lexed.tokens.len();
            PlannedStatement {
                span: lexed.tokens[r.start].span.start..lexed.tokens[r.end - 1].span.end,
                plan: if last && lexed.unterminated {
                    PlanResult::pass(PassThroughReason::Unparseable)
                } else {
                    plan_tokens(&src, r)
                },
            }
        })
        .collect();
    QueryPlan { statements }
}

/// Plans an extended-protocol Parse: one statement and the parameter type OIDs the client
/// declared (0 = unspecified).
pub fn plan_statement(sql: &str, param_types: &[u32]) -> StatementPlan {
    plan_statement_with(sql, param_types, PlanOptions::default())
}

/// [`plan_statement`] with explicit session settings.
pub fn plan_statement_with(sql: &str, param_types: &[u32], opts: PlanOptions) -> StatementPlan {
    if !mentions_pgml(sql) {
        return StatementPlan::Unchanged;
    }
    let lexed = lex(sql, opts.standard_conforming_strings);
    if lexed.unterminated {
        return PlanResult::pass(PassThroughReason::Unparseable);
    }
    let ranges = statement::split(sql, &lexed.tokens);
    let src = Source {
        sql,
        tokens: &lexed.tokens,
        param_types,
        standard_strings: opts.standard_conforming_strings,
    };
    match ranges.as_slice() {
        [] => StatementPlan::Unchanged,
        [one] => plan_tokens(&src, one.clone()),
        _ => PlanResult::pass(PassThroughReason::MultipleStatements),
    }
}

fn mentions_pgml(sql: &str) -> bool {
    sql.as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"pgml"))
}

struct PlanResult;

impl PlanResult {
    fn pass(reason: PassThroughReason) -> StatementPlan {
        StatementPlan::PassThrough { reason }
    }
}

/// Statement kinds whose embed calls the rewriter handles.
const REWRITABLE: &[&str] = &[
    "select", "with", "values", "insert", "update", "delete", "explain", "table",
];

fn plan_tokens(src: &Source, r: Range<usize>) -> StatementPlan {
    use PassThroughReason as R;
    let calls_at: Vec<usize> = r.clone().filter(|&i| src.call_starts_at(i)).collect();
    let first = src.text(r.start).to_ascii_lowercase();
    if calls_at.is_empty() {
        // A call inside a DO/CREATE FUNCTION body is in a string constant.
        let in_body = matches!(first.as_str(), "do" | "create")
            && r.clone().any(|i| {
                matches!(src.tokens[i].kind, Kind::Str(_)) && {
                    let t = src.text(i).as_bytes();
                    mentions_pgml(src.text(i))
                        && t.windows(5).any(|w| w.eq_ignore_ascii_case(b"embed"))
                }
            });
        return if in_body {
            PlanResult::pass(R::ServerSideBody)
        } else {
            StatementPlan::Unchanged
        };
    }
    if first == "do" || first == "create" {
        return PlanResult::pass(if first == "do" {
            R::ServerSideBody
        } else {
            R::UnsupportedStatement
        });
    }
    if !REWRITABLE.contains(&first.as_str()) {
        return PlanResult::pass(R::UnsupportedStatement);
    }
    let stmt_text = &src.sql[src.tokens[r.start].span.start..src.tokens[r.end - 1].span.end];
    if Parser::parse_sql(&PostgreSqlDialect {}, stmt_text).is_err() {
        return PlanResult::pass(R::Unparseable);
    }
    let mut calls = Vec::with_capacity(calls_at.len());
    for &i in &calls_at {
        match src.parse_call(i) {
            Ok(c) => calls.push(c),
            Err(_) => return PlanResult::pass(R::UnsupportedCall),
        }
    }
    if calls
        .windows(2)
        .any(|w| w[1].tokens.start < w[0].tokens.end)
    {
        return PlanResult::pass(R::NestedCall);
    }
    let constant = calls.iter().all(|c| {
        !c.batch
            && c.transformer.is_constant()
            && c.input.is_constant()
            && c.kwargs.is_constant()
            && !in_from_position(src, r.start, c.tokens.start)
    });
    if constant {
        let plan = constant_plan(src, r.clone(), calls);
        // The spliced statement must parse again, in both renderings; text that sqlparser
        // accepts but Postgres' lexer splits differently (`$1pgml.embed(...)`) is left alone.
        let start = src.tokens[r.start].span.start;
        let end = src.tokens[r.end - 1].span.end;
        let reparses = |rendered: &str| {
            let stmt_end = end + rendered.len() - src.sql.len();
            rendered
                .get(start..stmt_end)
                .is_some_and(|t| Parser::parse_sql(&PostgreSqlDialect {}, t).is_ok())
        };
        if !reparses(&plan.render_params(src.sql, &[]).0)
            || !reparses(&plan.render_literals(src.sql, &[]))
        {
            return PlanResult::pass(R::Unparseable);
        }
        return StatementPlan::Constant(plan);
    }
    if first == "explain" {
        return PlanResult::pass(R::UnsupportedStatement);
    }
    match prefetch::build(src, r, &calls) {
        Ok(query) => StatementPlan::Prefetch(PrefetchPlan { query, calls }),
        Err(reason) => PlanResult::pass(reason),
    }
}

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
fn in_from_position(src: &Source, stmt_start: usize, at: usize) -> bool {
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
fn keeps_embed_name(src: &Source, stmt_start: usize, call: &EmbedCall) -> Option<usize> {
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

fn constant_plan(src: &Source, r: Range<usize>, calls: Vec<EmbedCall>) -> ConstantPlan {
    let keep_name = calls
        .iter()
        .map(|c| keeps_embed_name(src, r.start, c))
        .collect();
    let mut max_param = 0;
    let mut outside: Vec<usize> = Vec::new();
    let mut inside: Vec<(usize, u32)> = Vec::new();
    for i in r.clone() {
        if src.tokens[i].kind != Kind::Param {
            continue;
        }
        let Some(n) = src.param_number(i) else {
            continue;
        };
        max_param = max_param.max(n);
        let owner = calls.iter().find(|c| c.tokens.contains(&i));
        match owner {
            None => outside.push(n),
            Some(call) => {
                let at = src.tokens[i].span.start;
                let kwargs = call.arg_spans[2].as_ref().is_some_and(|s| s.contains(&at));
                let cast = (src.tokens.get(i + 1).map(|t| t.kind) == Some(Kind::Cast))
                    .then(|| {
                        src.tokens
                            .get(i + 2)
                            .map(|_| src.text(i + 2).to_ascii_lowercase())
                    })
                    .flatten();
                let ty = match cast.as_deref() {
                    Some("varchar") => oid::VARCHAR,
                    Some("jsonb") => oid::JSONB,
                    Some("json") => oid::JSON,
                    Some("text") => oid::TEXT,
                    _ if kwargs && is_bare_param(&call.kwargs, n) => oid::JSONB,
                    _ => oid::TEXT,
                };
                inside.push((n, ty));
            }
        }
    }
    inside.retain(|(n, _)| !outside.contains(n));
    inside.sort_unstable();
    inside.dedup_by_key(|(n, _)| *n);
    ConstantPlan {
        calls,
        keep_name,
        hidden_params: inside,
        max_param,
    }
}

fn is_bare_param(arg: &ArgExpr, n: usize) -> bool {
    matches!(arg, ArgExpr::Param(p) if *p == n)
}

impl ConstantPlan {
    /// The calls to compute, in text order.
    pub fn calls(&self) -> &[EmbedCall] {
        &self.calls
    }

    /// Simple protocol: replaces each call by `('{...}'::real[])`, or `(NULL::real[])` where
    /// its value is None (STRICT: a NULL argument gives NULL). `values[i]` belongs to
    /// `calls()[i]`; a missing entry is rendered as NULL.
    pub fn render_literals(&self, sql: &str, values: &[Option<Vec<f32>>]) -> String {
        let mut out = String::with_capacity(sql.len() + values.len() * 4096);
        let end = self.splice_into(&mut out, sql, 0, values);
        out.push_str(&sql[end..]);
        out
    }

    /// Appends `sql[from..]` up to this plan's last call, with calls replaced; returns where
    /// the copied text stopped.
    fn splice_into(
        &self,
        out: &mut String,
        sql: &str,
        from: usize,
        values: &[Option<Vec<f32>>],
    ) -> usize {
        let mut pos = from;
        for (n, call) in self.calls.iter().enumerate() {
            out.push_str(&sql[pos..call.span.start]);
            out.push('(');
            match values.get(n).and_then(Option::as_deref) {
                Some(v) => push_real_array_literal(out, v),
                None => out.push_str("NULL::real[]"),
            }
            out.push(')');
            pos = self.push_name(out, sql, n, call.span.end);
        }
        pos
    }

    /// Extended protocol: replaces call i by `$k` (k = client parameter count + i + 1, typed
    /// `real[]`) and returns the new SQL with the parameter types to declare in Parse: the
    /// client's declared OIDs, the inferred type of parameters used only inside calls (they
    /// vanish from the text, so Postgres could not infer them), then 1021 per call.
    pub fn render_params(&self, sql: &str, client_param_types: &[u32]) -> (String, Vec<u32>) {
        let n_client = client_param_types.len().max(self.max_param);
        let mut types = vec![0u32; n_client];
        types[..client_param_types.len()].copy_from_slice(client_param_types);
        for &(n, ty) in &self.hidden_params {
            if types[n - 1] == 0 {
                types[n - 1] = ty;
            }
        }
        let mut out = String::with_capacity(sql.len());
        let mut pos = 0;
        for (n, call) in self.calls.iter().enumerate() {
            out.push_str(&sql[pos..call.span.start]);
            out.push('$');
            out.push_str(&(n_client + n + 1).to_string());
            pos = self.push_name(&mut out, sql, n, call.span.end);
            types.push(oid::REAL_ARRAY);
        }
        out.push_str(&sql[pos..]);
        (out, types)
    }

    /// Appends ` AS embed` where call `n`'s select item ends (after any `::type` suffix);
    /// returns how far the original text has been copied.
    fn push_name(&self, out: &mut String, sql: &str, n: usize, pos: usize) -> usize {
        match self.keep_name[n] {
            Some(end) => {
                out.push_str(&sql[pos..end]);
                out.push_str(" AS embed");
                // `...)FROM t` is valid SQL; `AS embedFROM` would not be.
                if sql[end..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '"' | '$' | '\''))
                {
                    out.push(' ');
                }
                end
            }
            None => pos,
        }
    }
}

impl QueryPlan {
    /// True when the string can be forwarded exactly as the client sent it (the proxy may
    /// still need to run prefetch queries: see [`QueryPlan::prefetch_queries`]).
    pub fn is_unchanged_text(&self) -> bool {
        !self
            .statements
            .iter()
            .any(|s| matches!(s.plan, StatementPlan::Constant(_)))
    }

    /// Calls the proxy must compute for the Constant statements, in text order.
    pub fn constant_calls(&self) -> impl Iterator<Item = &EmbedCall> {
        self.statements.iter().flat_map(|s| match &s.plan {
            StatementPlan::Constant(c) => c.calls.as_slice(),
            _ => &[],
        })
    }

    /// Prefetch queries to run (in order) before sending the string.
    pub fn prefetch_queries(&self) -> impl Iterator<Item = &PrefetchPlan> {
        self.statements.iter().filter_map(|s| match &s.plan {
            StatementPlan::Prefetch(p) => Some(p),
            _ => None,
        })
    }

    /// The whole string with every Constant statement's calls replaced by literals;
    /// `values` follows [`QueryPlan::constant_calls`] order.
    pub fn render_literals(&self, sql: &str, values: &[Option<Vec<f32>>]) -> String {
        let mut out = String::with_capacity(sql.len() + values.len() * 4096);
        let mut pos = 0;
        let mut used = 0;
        for s in &self.statements {
            if let StatementPlan::Constant(c) = &s.plan {
                let vals = values.get(used..).unwrap_or(&[]);
                pos = c.splice_into(&mut out, sql, pos, vals);
                used += c.calls.len();
            }
        }
        out.push_str(&sql[pos..]);
        out
    }
}
