//! Derives the prefetch query for a statement whose embed calls read columns: a query over
//! the same FROM/WHERE (and LIMIT where it is safe) returning the distinct argument tuples.
//! It only understands SELECT lists, ORDER BY, UPDATE SET/RETURNING, INSERT ... SELECT and CTEs.

use std::fmt::Write;
use std::ops::Range;

use crate::call::EmbedCall;
use crate::lexer::Kind;
use crate::plan::PassThroughReason;
use crate::source::Source;

type Reason = PassThroughReason;

/// Statement structure around the calls: clause keywords at the scope's own depth.
struct Scope {
    tokens: Range<usize>,
    /// Text to put before the scope's own query (the statement's WITH list).
    prefix: Range<usize>,
}

/// Builds the prefetch query for the statement `stmt` (token range) holding `calls`.
pub(crate) fn build(
    src: &Source,
    stmt: Range<usize>,
    calls: &[EmbedCall],
) -> Result<String, Reason> {
    let depth = depths(src, stmt.clone());
    let d = |i: usize| depth[i - stmt.start];
    let mut scoped: Vec<(Range<usize>, Vec<&EmbedCall>)> = Vec::new();
    let mut constant_branches = Vec::new();

    let (ctes, recursive, main) = with_clause(src, stmt.clone())?;
    let prefix = stmt.start..main;
    for call in calls {
        let row_dependent = call.transformer.is_row_dependent()
            || call.input.is_row_dependent()
            || call.kwargs.is_row_dependent();
        if !row_dependent {
            constant_branches.push(call);
            continue;
        }
        // The innermost subquery around the call decides its scope.
        let mut stack = Vec::new();
        for i in stmt.start..call.tokens.start {
            match src.tokens[i].kind {
                Kind::LParen | Kind::LBracket => stack.push(i),
                Kind::RParen | Kind::RBracket => {
                    stack.pop();
                }
                _ => {}
            }
        }
        let subquery = stack.iter().rev().find(|&&open| {
            ["select", "with", "values"]
                .iter()
                .any(|w| src.is_word(open + 1, w))
        });
        let scope = match subquery {
            None => main..stmt.end,
            Some(&open) => {
                let body = ctes
                    .iter()
                    .find(|b| b.start == open + 1)
                    .ok_or(Reason::UnsupportedPosition)?;
                if recursive {
                    return Err(Reason::UnsupportedPosition);
                }
                body.clone()
            }
        };
        match scoped.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, v)) => v.push(call),
            None => scoped.push((scope, vec![call])),
        }
    }

    let mut branches = Vec::new();
    for (range, calls) in &scoped {
        let scope = Scope {
            tokens: range.clone(),
            prefix: prefix.clone(),
        };
        let inner = if src.is_word(range.start, "select") {
            select_inner(src, &scope, &d, calls)?
        } else if src.is_word(range.start, "update") {
            update_inner(src, &scope, &d, calls)?
        } else if src.is_word(range.start, "insert") {
            let q = (range.start..range.end)
                .find(|&i| d(i) == d(range.start) && src.is_word(i, "select"))
                .ok_or(Reason::UnsupportedPosition)?;
            let end = (q..range.end)
                .find(|&i| {
                    d(i) == d(range.start)
                        && (src.is_word(i, "returning")
                            || (src.is_word(i, "on") && src.is_word(i + 1, "conflict")))
                })
                .unwrap_or(range.end);
            if calls
                .iter()
                .any(|c| c.tokens.start < q || c.tokens.end > end)
            {
                return Err(Reason::UnsupportedPosition);
            }
            let scope = Scope {
                tokens: q..end,
                prefix: prefix.clone(),
            };
            select_inner(src, &scope, &d, calls)?
        } else {
            return Err(Reason::UnsupportedPosition);
        };
        let mut branch =
            format!("SELECT x.t, x.i, x.k FROM ({inner}) AS pgml_s CROSS JOIN LATERAL (");
        for (n, call) in calls.iter().enumerate() {
            if n > 0 {
                branch.push_str(" UNION ALL ");
            }
            let n = n + 1;
            let input = if call.batch {
                format!("unnest(pgml_s.pgml_i{n})")
            } else {
                format!("pgml_s.pgml_i{n}")
            };
            let _ = write!(branch, "SELECT pgml_s.pgml_t{n}, {input}, pgml_s.pgml_k{n}");
        }
        branch.push_str(") AS x(t, i, k)");
        branches.push(branch);
    }
    for call in constant_branches {
        let [t, i, k] = arg_texts(src, call);
        let input = if call.batch {
            format!("unnest(({i})::text[])")
        } else {
            format!("({i})::text")
        };
        branches.push(format!("SELECT ({t})::text, {input}, ({k})::jsonb::text"));
    }
    Ok(format!(
        "SELECT DISTINCT t, i, k FROM ({}) AS pgml_prefetch(t, i, k) \
         WHERE t IS NOT NULL AND i IS NOT NULL AND k IS NOT NULL",
        branches.join(" UNION ALL ")
    ))
}

/// Paren depth of each token of `stmt`, relative to the statement.
fn depths(src: &Source, stmt: Range<usize>) -> Vec<usize> {
    let mut depth = 0usize;
    stmt.map(|i| match src.tokens[i].kind {
        Kind::LParen | Kind::LBracket => {
            depth += 1;
            depth - 1
        }
        Kind::RParen | Kind::RBracket => {
            depth = depth.saturating_sub(1);
            depth
        }
        _ => depth,
    })
    .collect()
}

/// Parses a leading `WITH` list: the CTE bodies' token ranges, RECURSIVE, and the index of
/// the main statement's first token. Data-modifying CTEs are refused: a prefetch would run them.
fn with_clause(
    src: &Source,
    stmt: Range<usize>,
) -> Result<(Vec<Range<usize>>, bool, usize), Reason> {
    if !src.is_word(stmt.start, "with") {
        return Ok((Vec::new(), false, stmt.start));
    }
    let mut i = stmt.start + 1;
    let recursive = src.is_word(i, "recursive");
    if recursive {
        i += 1;
    }
    let mut bodies = Vec::new();
    loop {
        i += 1; // the CTE name
        if src.tokens.get(i).is_some_and(|t| t.kind == Kind::LParen) {
            i = src.matching(i).ok_or(Reason::UnsupportedStatement)? + 1;
        }
        if !src.is_word(i, "as") {
            return Err(Reason::UnsupportedStatement);
        }
        i += 1;
        if src.is_word(i, "not") {
            i += 1;
        }
        if src.is_word(i, "materialized") {
            i += 1;
        }
        if src.tokens.get(i).map(|t| t.kind) != Some(Kind::LParen) {
            return Err(Reason::UnsupportedStatement);
        }
        let close = src.matching(i).ok_or(Reason::UnsupportedStatement)?;
        if ["insert", "update", "delete", "merge"]
            .iter()
            .any(|w| src.is_word(i + 1, w))
        {
            return Err(Reason::DataModifyingCte);
        }
        bodies.push(i + 1..close);
        i = close + 1;
        if src.tokens.get(i).map(|t| t.kind) == Some(Kind::Comma) {
            continue;
        }
        if i >= stmt.end {
            return Err(Reason::UnsupportedStatement);
        }
        return Ok((bodies, recursive, i));
    }
}

/// The SQL text of each argument (kwargs default spelled out).
fn arg_texts<'a>(src: &Source<'a>, call: &EmbedCall) -> [&'a str; 3] {
    let text = |r: &Option<Range<usize>>| r.as_ref().map_or("'{}'", |r| &src.sql[r.clone()]);
    [
        text(&call.arg_spans[0]),
        text(&call.arg_spans[1]),
        text(&call.arg_spans[2]),
    ]
}

/// `(T)::text AS pgml_t1, (I)::text AS pgml_i1, (K)::jsonb::text AS pgml_k1, ...`
fn columns(src: &Source, calls: &[&EmbedCall]) -> String {
    let mut out = String::new();
    for (n, call) in calls.iter().enumerate() {
        let [t, i, k] = arg_texts(src, call);
        let n = n + 1;
        let input_ty = if call.batch { "text[]" } else { "text" };
        if n > 1 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "({t})::text AS pgml_t{n}, ({i})::{input_ty} AS pgml_i{n}, ({k})::jsonb::text AS pgml_k{n}"
        );
    }
    out
}

fn text_between<'a>(src: &Source<'a>, from: usize, to: usize) -> &'a str {
    if to <= from {
        return "";
    }
    &src.sql[src.tokens[from].span.start..src.tokens[to - 1].span.end]
}

/// Depth-0 clause keywords of a SELECT scope.
#[derive(Default)]
struct Clauses {
    first_after_list: Option<usize>,
    group: Option<usize>,
    order: Option<usize>,
    limit_like: Option<usize>,
}

fn select_inner(
    src: &Source,
    scope: &Scope,
    d: &dyn Fn(usize) -> usize,
    calls: &[&EmbedCall],
) -> Result<String, Reason> {
    let r = scope.tokens.clone();
    let base = d(r.start);
    let mut c = Clauses::default();
    for i in r.clone() {
        if d(i) != base || src.tokens[i].kind != Kind::Ident {
            continue;
        }
        let w = src.text(i).to_ascii_lowercase();
        let is_clause = match w.as_str() {
            "from" => !(i > 0 && src.is_word(i - 1, "distinct")),
            "group" => !(i > 0 && src.is_word(i - 1, "within")),
            "where" | "having" | "window" | "order" | "limit" | "offset" | "fetch" => true,
            "union" | "intersect" | "except" | "into" | "for" => {
                return Err(Reason::UnsupportedPosition)
            }
            _ => false,
        };
        if !is_clause || i == r.start {
            continue;
        }
        c.first_after_list.get_or_insert(i);
        match w.as_str() {
            "group" => c.group = Some(i),
            "order" => c.order = Some(i),
            "limit" | "offset" | "fetch" => {
                c.limit_like.get_or_insert(i);
            }
            _ => {}
        }
    }
    let list_end = c.first_after_list.unwrap_or(r.end);
    let mut list_start = r.start + 1;
    let mut distinct = false;
    if src.is_word(list_start, "all") {
        list_start += 1;
    } else if src.is_word(list_start, "distinct") {
        if src.is_word(list_start + 1, "on") {
            return Err(Reason::UnsupportedPosition);
        }
        distinct = true;
        list_start += 1;
    }
    let aliases: Vec<&str> = (list_start..list_end)
        .filter(|&i| d(i) == base && i > 0 && src.is_word(i - 1, "as"))
        .map(|i| src.text(i))
        .collect();
    let refers_to_output = |from: usize, to: usize| {
        (from..to).any(|i| {
            d(i) == base
                && ((src.tokens[i].kind == Kind::Number
                    && i > 0
                    && (src.is_word(i - 1, "by") || src.tokens[i - 1].kind == Kind::Comma))
                    || (src.tokens[i].kind == Kind::Ident
                        && aliases.iter().any(|a| a.eq_ignore_ascii_case(src.text(i)))))
        })
    };
    let mut in_order_by = false;
    for call in calls {
        let start = call.tokens.start;
        if start >= list_start && call.tokens.end <= list_end {
            if c.group.is_some() && d(start) != base {
                return Err(Reason::UnsupportedPosition);
            }
        } else if c.order.is_some_and(|o| start > o) && c.limit_like.is_none_or(|l| start < l) {
            in_order_by = true;
        } else {
            return Err(Reason::UnsupportedPosition);
        }
    }
    if let Some(g) = c.group {
        let g_end = (g + 1..r.end)
            .find(|&i| {
                d(i) == base
                    && ["having", "window", "order", "limit", "offset", "fetch"]
                        .iter()
                        .any(|w| src.is_word(i, w))
            })
            .unwrap_or(r.end);
        if refers_to_output(g + 2, g_end) {
            return Err(Reason::UnsupportedPosition);
        }
    }
    let tail_end = match c.order.or(c.limit_like) {
        Some(cut)
            if distinct
                || in_order_by
                || c.order
                    .is_some_and(|o| refers_to_output(o + 2, c.limit_like.unwrap_or(r.end))) =>
        {
            cut
        }
        _ => r.end,
    };
    let mut out = String::new();
    out.push_str(text_between(src, scope.prefix.start, scope.prefix.end));
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str("SELECT ");
    out.push_str(&columns(src, calls));
    let tail = text_between(src, list_end, tail_end);
    if !tail.is_empty() {
        out.push(' ');
        out.push_str(tail);
    }
    Ok(out)
}

fn update_inner(
    src: &Source,
    scope: &Scope,
    d: &dyn Fn(usize) -> usize,
    calls: &[&EmbedCall],
) -> Result<String, Reason> {
    let r = scope.tokens.clone();
    let base = d(r.start);
    let find = |w: &str, from: usize| (from..r.end).find(|&i| d(i) == base && src.is_word(i, w));
    let set = find("set", r.start).ok_or(Reason::UnsupportedStatement)?;
    let from = find("from", set);
    let where_ = find("where", set);
    let returning = find("returning", set);
    if where_.is_some_and(|w| src.is_word(w + 1, "current")) {
        return Err(Reason::UnsupportedPosition);
    }
    let set_end = from.or(where_).or(returning).unwrap_or(r.end);
    for call in calls {
        let in_set = call.tokens.start > set && call.tokens.end <= set_end;
        let in_returning = returning.is_some_and(|ret| call.tokens.start > ret);
        if !(in_set || in_returning) {
            return Err(Reason::UnsupportedPosition);
        }
    }
    let body_end = returning.unwrap_or(r.end);
    let mut out = String::new();
    out.push_str(text_between(src, scope.prefix.start, scope.prefix.end));
    if !out.is_empty() {
        out.push(' ');
    }
    let _ = write!(
        out,
        "SELECT {} FROM {}",
        columns(src, calls),
        text_between(src, r.start + 1, set)
    );
    if let Some(f) = from {
        out.push_str(", ");
        out.push_str(text_between(src, f + 1, where_.unwrap_or(body_end)));
    }
    if let Some(w) = where_ {
        out.push(' ');
        out.push_str(text_between(src, w, body_end));
    }
    Ok(out)
}
