//! The inner query of one prefetch scope: the scope's own FROM/WHERE (and ORDER BY/LIMIT
//! where that is exact) with each call's arguments as columns, for a SELECT or an UPDATE.

use std::collections::HashSet;
use std::fmt::Write;

use super::{arg_texts, Reason, Scope};
use crate::call::{CallFunction, EmbedCall};
use crate::lexer::Kind;
use crate::source::Source;

/// `(T)::text AS pgml_t1, (I)::text AS pgml_i1, (K)::jsonb::text AS pgml_k1, ...`; a
/// pgml.transform call's request key as `pgml_t{n}` (its input and kwargs empty).
fn columns(src: &Source, calls: &[&EmbedCall]) -> String {
    let mut out = String::new();
    for (n, call) in calls.iter().enumerate() {
        let [t, i, k] = arg_texts(src, call);
        let n = n + 1;
        let input_ty = if call.batch { "text[]" } else { "text" };
        if n > 1 {
            out.push_str(", ");
        }
        if call.function == CallFunction::Transform {
            // The whole request is the key; `t` holds the argument list.
            let _ = write!(
                out,
                "pgml_proxy.transform_key({t}) AS pgml_t{n}, ''::text AS pgml_i{n}, '{{}}'::text AS pgml_k{n}"
            );
            continue;
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

pub(super) fn select_inner(
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
    // A set, so that matching ORDER BY/GROUP BY words against aliases stays linear.
    let aliases: HashSet<String> = (list_start..list_end)
        .filter(|&i| d(i) == base && i > 0 && src.is_word(i - 1, "as"))
        .map(|i| src.text(i).to_ascii_lowercase())
        .collect();
    let refers_to_output = |from: usize, to: usize| {
        (from..to).any(|i| {
            d(i) == base
                && ((src.tokens[i].kind == Kind::Number
                    && i > 0
                    && (src.is_word(i - 1, "by") || src.tokens[i - 1].kind == Kind::Comma))
                    || (src.tokens[i].kind == Kind::Ident
                        && aliases.contains(&src.text(i).to_ascii_lowercase())))
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
    out.push_str(&scope.prefix);
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

pub(super) fn update_inner(
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
    out.push_str(&scope.prefix);
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
