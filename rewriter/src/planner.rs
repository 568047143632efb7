//! The planner: per statement, decides whether the proxy computes the embeddings itself
//! (constant arguments), prefetches them (row-dependent arguments) or passes the statement
//! through to the upstream shim. It builds plans; `render.rs` turns them back into SQL.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::call::{oid, ArgExpr, CallFunction, EmbedCall};
use crate::lexer::{lex, Kind, Lexed};
use crate::limits::{MAX_CALLS, MAX_NESTING, MAX_PARAMS, MAX_STATEMENTS};
use crate::plan::{
    ConstantPlan, PassThroughReason, PlanOptions, PlannedStatement, PrefetchPlan, QueryPlan,
    SimpleQueryPlan, StatementPlan,
};
use crate::position::{governing_clauses, in_from_position, keeps_embed_name};
use crate::source::Source;
use crate::{load_dataset, prefetch, statement};

/// Plans a simple-protocol Query string (one or more statements).
pub fn plan_query(sql: &str) -> QueryPlan {
    plan_query_with(sql, PlanOptions::default())
}

/// [`plan_query`] with explicit session settings.
pub fn plan_query_with(sql: &str, opts: PlanOptions) -> QueryPlan {
    if !mentions_pgml(sql.as_bytes()) {
        return QueryPlan::default();
    }
    plan_lexed(sql, &lex(sql, opts.standard_conforming_strings), opts)
}

/// The one entry point for a simple-protocol Query string: the fast `pgml` check, then
/// `pgml.load_dataset` recognition and per-statement planning over a single lexing pass.
pub fn plan_simple_query(sql: &str, opts: PlanOptions) -> SimpleQueryPlan {
    if !mentions_pgml(sql.as_bytes()) {
        return SimpleQueryPlan::NoPgml;
    }
    let lexed = lex(sql, opts.standard_conforming_strings);
    if !lexed.unterminated && !lexed.truncated {
        if let Some(call) =
            load_dataset::recognise(sql, &lexed.tokens, opts.standard_conforming_strings)
        {
            return SimpleQueryPlan::LoadDataset(call);
        }
    }
    SimpleQueryPlan::Query(plan_lexed(sql, &lexed, opts))
}

/// True when `sql` mentions `pgml` in any letter case. Text without it is never lexed or
/// parsed: this is the proxy's fast path for every statement it relays.
pub fn mentions_pgml(sql: &[u8]) -> bool {
    // Each `p` or `P` (found many bytes at a time), then the three bytes after it: on every
    // Query the relay passes through, so a fraction of an instruction per byte, not ten.
    memchr::memchr2_iter(b'p', b'P', sql).any(|at| {
        sql.get(at + 1..at + 4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"gml"))
    })
}

fn plan_lexed(sql: &str, lexed: &Lexed, opts: PlanOptions) -> QueryPlan {
    let whole_text = |reason| QueryPlan {
        statements: vec![PlannedStatement {
            span: 0..sql.len(),
            plan: PlanResult::pass(reason),
        }],
    };
    if lexed.truncated {
        return whole_text(PassThroughReason::LimitExceeded);
    }
    let ranges = statement::split(sql, &lexed.tokens);
    if ranges.len() > MAX_STATEMENTS {
        return whole_text(PassThroughReason::LimitExceeded);
    }
    let src = Source::new(sql, &lexed.tokens, &[], opts.standard_conforming_strings);
    let too_many_calls = (0..lexed.tokens.len())
        .filter(|&i| src.call_starts_at(i))
        .nth(MAX_CALLS)
        .is_some();
    let statements = ranges
        .into_iter()
        .map(|r| {
            let last = r.end == lexed.tokens.len();
            PlannedStatement {
                span: lexed.tokens[r.start].span.start..lexed.tokens[r.end - 1].span.end,
                plan: if last && lexed.unterminated {
                    PlanResult::pass(PassThroughReason::Unparseable)
                } else {
                    plan_tokens(&src, r, too_many_calls)
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
    if !mentions_pgml(sql.as_bytes()) {
        return StatementPlan::Unchanged;
    }
    let lexed = lex(sql, opts.standard_conforming_strings);
    if lexed.truncated {
        return PlanResult::pass(PassThroughReason::LimitExceeded);
    }
    if lexed.unterminated {
        return PlanResult::pass(PassThroughReason::Unparseable);
    }
    let ranges = statement::split(sql, &lexed.tokens);
    let src = Source::new(
        sql,
        &lexed.tokens,
        param_types,
        opts.standard_conforming_strings,
    );
    let plan = match ranges.as_slice() {
        [] => return StatementPlan::Unchanged,
        [one] => plan_tokens(&src, one.clone(), false),
        _ => return PlanResult::pass(PassThroughReason::MultipleStatements),
    };
    match plan {
        // The rewritten Parse declares the client's parameters and one more per call; the
        // protocol counts them in 16 bits.
        StatementPlan::Constant(c)
            if param_types.len().max(c.max_param) + c.calls.len() > MAX_PARAMS =>
        {
            PlanResult::pass(PassThroughReason::LimitExceeded)
        }
        plan => plan,
    }
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

/// Deepest parenthesis/bracket nesting in the token range.
fn nesting_depth(src: &Source, r: Range<usize>) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0;
    for t in &src.tokens[r] {
        match t.kind {
            Kind::LParen | Kind::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Kind::RParen | Kind::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Plans the statement `r`; `too_many_calls` when the whole text has over [`MAX_CALLS`].
fn plan_tokens(src: &Source, r: Range<usize>, too_many_calls: bool) -> StatementPlan {
    use PassThroughReason as R;
    let calls_at: Vec<usize> = r.clone().filter(|&i| src.call_starts_at(i)).collect();
    let first = src.text(r.start).to_ascii_lowercase();
    if calls_at.is_empty() {
        // A call inside a DO/CREATE FUNCTION body is in a string constant.
        let in_body = matches!(first.as_str(), "do" | "create")
            && r.clone().any(|i| {
                matches!(src.tokens[i].kind, Kind::Str(_)) && {
                    let t = src.text(i).as_bytes();
                    mentions_pgml(t) && t.windows(5).any(|w| w.eq_ignore_ascii_case(b"embed"))
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
    if too_many_calls || calls_at.len() > MAX_CALLS || nesting_depth(src, r.clone()) > MAX_NESTING {
        return PlanResult::pass(R::LimitExceeded);
    }
    // `$0`, `$65536`, `$100000000000000`: no Bind can supply them; Postgres reports them itself.
    if r.clone()
        .any(|i| src.tokens[i].kind == Kind::Param && src.param_number(i).is_none())
    {
        return PlanResult::pass(R::InvalidParameter);
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
    // A pgml.transform call with constant arguments is one request: the shim's upcall serves
    // it as well as a prefetch would. Only calls that read rows are planned.
    calls.retain(|c| c.function != CallFunction::Transform || c.transformer.is_row_dependent());
    if calls.is_empty() {
        return StatementPlan::Unchanged;
    }
    let clauses = governing_clauses(src, r.clone(), &calls);
    // pgml.chunk returns a set: never spliced, its constant calls are prefetched.
    let constant = calls.iter().zip(&clauses).all(|(c, &kw)| {
        c.function == CallFunction::Embed
            && !c.batch
            && c.transformer.is_constant()
            && c.input.is_constant()
            && c.kwargs.is_constant()
            && !in_from_position(src, kw, c.tokens.start)
    });
    if constant {
        let plan = constant_plan(src, r.clone(), calls, &clauses);
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
            || !reparses(&plan.render_literals(src.sql, &[] as &[Option<Vec<f32>>]))
        {
            return PlanResult::pass(R::Unparseable);
        }
        return StatementPlan::Constant(plan);
    }
    if first == "explain" {
        return PlanResult::pass(R::UnsupportedStatement);
    }
    match prefetch::build(src, r, &calls) {
        Ok(query) => {
            let (functions, relations) = names(&query, src.standard_strings);
            StatementPlan::Prefetch(PrefetchPlan {
                query,
                calls,
                functions,
                relations,
            })
        }
        Err(reason) => PlanResult::pass(reason),
    }
}

fn constant_plan(
    src: &Source,
    r: Range<usize>,
    calls: Vec<EmbedCall>,
    clauses: &[Option<usize>],
) -> ConstantPlan {
    let keep_name = calls
        .iter()
        .zip(clauses)
        .map(|(c, &kw)| keeps_embed_name(src, kw, c))
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
        // Calls are in text order and do not overlap (nested calls were passed through).
        let owner = calls[..calls.partition_point(|c| c.tokens.start <= i)]
            .last()
            .filter(|c| c.tokens.contains(&i));
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
    outside.sort_unstable();
    inside.retain(|(n, _)| outside.binary_search(n).is_err());
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

/// The names in `sql`: those of the functions it calls (every name directly before `(`,
/// keywords that take parentheses included: no function is called `in` or `values`, so they
/// match nothing), and all the others. Unquoted names are folded to lower case as Postgres
/// folds them; duplicates are dropped.
fn names(sql: &str, standard_strings: bool) -> (Vec<String>, Vec<String>) {
    let lexed = lex(sql, standard_strings);
    let (mut functions, mut others) = (Vec::new(), Vec::new());
    for (i, token) in lexed.tokens.iter().enumerate() {
        let Some(text) = sql.get(token.span.clone()) else {
            continue;
        };
        let name = match token.kind {
            Kind::Ident => text.to_ascii_lowercase(),
            Kind::QuotedIdent => match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(t) => t.replace("\"\"", "\""),
                None => continue,
            },
            _ => continue,
        };
        let called = lexed
            .tokens
            .get(i + 1)
            .is_some_and(|next| next.kind == Kind::LParen);
        if called {
            functions.push(name);
        } else {
            others.push(name);
        }
    }
    for list in [&mut functions, &mut others] {
        list.sort_unstable();
        list.dedup();
    }
    (functions, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_plan_names_its_functions_apart_from_every_other_name() {
        let StatementPlan::Prefetch(plan) = plan_statement(
            "SELECT pgml.embed('m', lower(d.body)) FROM app.\"Docs View\" d WHERE audited(d.id)",
            &[],
        ) else {
            panic!("not a prefetch plan");
        };
        for f in ["lower", "audited"] {
            assert!(
                plan.functions.iter().any(|n| n == f),
                "{:?}",
                plan.functions
            );
        }
        for r in ["app", "Docs View", "d", "body", "id"] {
            assert!(
                plan.relations.iter().any(|n| n == r),
                "{:?}",
                plan.relations
            );
        }
        assert!(!plan.relations.iter().any(|n| n == "audited"));
    }
}
