//! Derives the prefetch query for a statement whose embed calls read columns: a query over
//! the same FROM/WHERE (and LIMIT where it is safe) returning the distinct argument tuples.
//! It only understands SELECT lists, ORDER BY, UPDATE SET/RETURNING, INSERT ... SELECT and CTEs.

use std::fmt::Write;
use std::ops::Range;

use crate::call::{CallFunction, EmbedCall};
use crate::lexer::Kind;
use crate::plan::PassThroughReason;
use crate::source::Source;

mod inner;

use inner::{select_inner, update_inner};

type Reason = PassThroughReason;

/// Statement structure around the calls: clause keywords at the scope's own depth.
struct Scope {
    tokens: Range<usize>,
    /// Text to put before the scope's own query (the statement's WITH list, less its
    /// data-modifying CTEs).
    prefix: String,
}

/// One CTE of a leading WITH list.
struct Cte {
    /// The CTE's name token.
    name: usize,
    /// Its body, inside the parentheses.
    body: Range<usize>,
    /// INSERT/UPDATE/DELETE/MERGE: a prefetch query must not run it.
    modifying: bool,
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
    let prefix = with_prefix(src, stmt.clone(), &ctes, recursive, main)?;
    let subqueries = innermost_subqueries(src, stmt.clone(), calls);
    for (call, subquery) in calls.iter().zip(subqueries) {
        let row_dependent = call.transformer.is_row_dependent()
            || call.input.is_row_dependent()
            || call.kwargs.is_row_dependent();
        if !row_dependent {
            constant_branches.push(call);
            continue;
        }
        // The innermost subquery around the call decides its scope.
        let scope = match subquery.as_ref() {
            None => main..stmt.end,
            Some(_) if recursive => return Err(Reason::UnsupportedPosition),
            Some(&open) => {
                if !independent_scope(src, stmt.clone(), &ctes, open) {
                    return Err(Reason::UnsupportedPosition);
                }
                let close = src.matching(open).ok_or(Reason::UnsupportedPosition)?;
                open + 1..close
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
            format!("SELECT x.f, x.t, x.i, x.k FROM ({inner}) AS pgml_s CROSS JOIN LATERAL (");
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
            let f = call.function.tag();
            let _ = write!(
                branch,
                "SELECT '{f}', pgml_s.pgml_t{n}, {input}, pgml_s.pgml_k{n}"
            );
        }
        branch.push_str(") AS x(f, t, i, k)");
        branches.push(branch);
    }
    for call in constant_branches {
        let [t, i, k] = arg_texts(src, call);
        if call.function == CallFunction::Transform {
            branches.push(format!(
                "SELECT 't', pgml_proxy.transform_key({t}), ''::text, '{{}}'::text"
            ));
            continue;
        }
        let input = if call.batch {
            format!("unnest(({i})::text[])")
        } else {
            format!("({i})::text")
        };
        let f = call.function.tag();
        branches.push(format!(
            "SELECT '{f}', ({t})::text, {input}, ({k})::jsonb::text"
        ));
    }
    Ok(format!(
        "SELECT DISTINCT f, t, i, k FROM ({}) AS pgml_prefetch(f, t, i, k) \
         WHERE t IS NOT NULL AND i IS NOT NULL AND k IS NOT NULL",
        branches.join(" UNION ALL ")
    ))
}

/// True when the query opened at `open` reads no row of an outer query, so that a prefetch
/// over its own FROM/WHERE sees exactly its rows: a (non-modifying) CTE body, or a derived
/// table (`FROM (SELECT ...)`, `JOIN (SELECT ...)`, not LATERAL) of the main query or of
/// such a query. An outer LIMIT or WHERE may leave some of its rows unused: those values are
/// computed for nothing, never wrongly.
fn independent_scope(src: &Source, stmt: Range<usize>, ctes: &[Cte], open: usize) -> bool {
    if ctes.iter().any(|c| c.body.start == open + 1) {
        return ctes
            .iter()
            .any(|c| c.body.start == open + 1 && !c.modifying);
    }
    if open <= stmt.start || !in_from_list(src, stmt.start, open) {
        return false;
    }
    match enclosing_subquery(src, stmt.clone(), open) {
        None => true,
        Some(parent) => independent_scope(src, stmt, ctes, parent),
    }
}

/// True when the `(` at `open` starts an item of a FROM list (after FROM, JOIN or a comma of
/// the FROM list), not LATERAL.
fn in_from_list(src: &Source, first: usize, open: usize) -> bool {
    let before = open - 1;
    if src.is_word(before, "from") || src.is_word(before, "join") {
        return true;
    }
    if src.tokens[before].kind != Kind::Comma {
        return false;
    }
    // Back over the list at this depth to the keyword that governs it.
    let mut depth = 0usize;
    for j in (first..before).rev() {
        match src.tokens[j].kind {
            Kind::RParen | Kind::RBracket => depth += 1,
            Kind::LParen | Kind::LBracket if depth == 0 => return false,
            Kind::LParen | Kind::LBracket => depth -= 1,
            Kind::Ident if depth == 0 => {
                let w = src.text(j).to_ascii_lowercase();
                match w.as_str() {
                    "from" | "join" | "using" => return true,
                    "on" => return !(j > first && src.is_word(j - 1, "distinct")),
                    "select" | "where" | "group" | "having" | "order" | "limit" | "offset"
                    | "set" | "returning" | "values" | "window" | "by" => return false,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    false
}

/// The `(` opening the innermost SELECT/WITH/VALUES subquery around token `at`, if any.
fn enclosing_subquery(src: &Source, stmt: Range<usize>, at: usize) -> Option<usize> {
    let mut open: Vec<usize> = Vec::new();
    for i in stmt.start..at {
        match src.tokens[i].kind {
            Kind::LParen | Kind::LBracket => open.push(i),
            Kind::RParen | Kind::RBracket => {
                open.pop();
            }
            _ => {}
        }
    }
    open.iter().rev().copied().find(|&o| {
        ["select", "with", "values"]
            .iter()
            .any(|w| src.is_word(o + 1, w))
    })
}

/// Per call (in text order): the `(` opening the innermost subquery around it, if any. One
/// forward pass over the statement, however many calls it has.
fn innermost_subqueries(
    src: &Source,
    stmt: Range<usize>,
    calls: &[EmbedCall],
) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(calls.len());
    let mut next = calls.iter().map(|c| c.tokens.start).peekable();
    let mut open: Vec<usize> = Vec::new();
    for i in stmt {
        while next.next_if_eq(&i).is_some() {
            // `open` is at most MAX_NESTING deep: the planner checked.
            out.push(open.iter().rev().copied().find(|&o| {
                ["select", "with", "values"]
                    .iter()
                    .any(|w| src.is_word(o + 1, w))
            }));
        }
        match src.tokens[i].kind {
            Kind::LParen | Kind::LBracket => open.push(i),
            Kind::RParen | Kind::RBracket => {
                open.pop();
            }
            _ => {}
        }
    }
    out.resize(calls.len(), None);
    out
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

/// The WITH list to put before a scope's query: the statement's own when no CTE modifies
/// data; else the others alone, provided nothing outside a modifying CTE names it (its effects
/// are invisible to the rest of the statement, which runs on the same snapshot as the prefetch).
fn with_prefix(
    src: &Source,
    stmt: Range<usize>,
    ctes: &[Cte],
    recursive: bool,
    main: usize,
) -> Result<String, Reason> {
    let text =
        |r: Range<usize>| &src.sql[src.tokens[r.start].span.start..src.tokens[r.end - 1].span.end];
    if main == stmt.start {
        return Ok(String::new());
    }
    if !ctes.iter().any(|c| c.modifying) {
        return Ok(text(stmt.start..main).to_owned());
    }
    if recursive {
        return Err(Reason::DataModifyingCte);
    }
    // Compared loosely (quotes off, any case): a false match only costs the prefetch.
    let bare = |i: usize| src.text(i).trim_matches('"').to_ascii_lowercase();
    for m in ctes.iter().filter(|c| c.modifying) {
        let name = bare(m.name);
        let named_elsewhere = stmt.clone().any(|i| {
            !(m.name..m.body.end + 1).contains(&i)
                && matches!(src.tokens[i].kind, Kind::Ident | Kind::QuotedIdent)
                && bare(i) == name
        });
        if named_elsewhere {
            return Err(Reason::DataModifyingCte);
        }
    }
    let kept: Vec<&str> = ctes
        .iter()
        .filter(|c| !c.modifying)
        .map(|c| text(c.name..c.body.end + 1))
        .collect();
    if kept.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("WITH {}", kept.join(", ")))
}

/// Parses a leading `WITH` list: its CTEs, RECURSIVE, and the index of the main statement's
/// first token.
fn with_clause(src: &Source, stmt: Range<usize>) -> Result<(Vec<Cte>, bool, usize), Reason> {
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
        let name = i;
        i += 1;
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
        let modifying = ["insert", "update", "delete", "merge"]
            .iter()
            .any(|w| src.is_word(i + 1, w));
        bodies.push(Cte {
            name,
            body: i + 1..close,
            modifying,
        });
        i = close + 1;
        if src.tokens.get(i).map(|t| t.kind) == Some(Kind::Comma) {
            i += 1;
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
