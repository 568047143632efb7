//! Turns a constant plan back into SQL: calls replaced by `real[]` literals (simple protocol)
//! or by appended `$n` parameters (extended protocol). Only spans the planner found are cut,
//! and only when they fit the text given: rendering never panics, whatever the caller passes.

use crate::call::{oid, CallFunction};
use crate::plan::{ConstantPlan, PrefetchPlan, QueryPlan, StatementPlan};
use crate::quote::{push_real_array_literal, quote_literal};

/// What goes where a constant call was, in the simple protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal<'a> {
    /// The embedding: `('{...}'::real[])`.
    Vector(&'a [f32]),
    /// SQL NULL (STRICT: a NULL argument): `(NULL::real[])`.
    Null,
    /// A text Postgres rejects as a `real[]` (`('text'::real[])`): the statement fails where
    /// Postgres reaches it, as an error of its own would; statements before it run.
    Invalid(String),
}

/// A value that can be spliced where a call was.
pub trait Splice {
    /// Appends the SQL for this value.
    fn splice(&self, out: &mut String);
    /// About how many bytes of SQL it takes (for sizing, never for correctness).
    fn text_len(&self) -> usize;
}

impl Splice for Option<Vec<f32>> {
    fn splice(&self, out: &mut String) {
        match self {
            Some(v) => push_real_array_literal(out, v),
            None => out.push_str("NULL::real[]"),
        }
    }
    fn text_len(&self) -> usize {
        self.as_ref().map_or(0, |v| v.len().saturating_mul(16))
    }
}

impl Splice for Literal<'_> {
    fn splice(&self, out: &mut String) {
        match self {
            Literal::Vector(v) => push_real_array_literal(out, v),
            Literal::Null => out.push_str("NULL::real[]"),
            Literal::Invalid(text) => {
                // NUL cannot be quoted (Postgres text cannot hold it): any other invalid text does.
                let quoted = quote_literal(text).unwrap_or_else(|_| "'invalid'".to_owned());
                out.push_str(&quoted);
                out.push_str("::real[]");
            }
        }
    }
    fn text_len(&self) -> usize {
        match self {
            Literal::Vector(v) => v.len().saturating_mul(16),
            Literal::Null => 0,
            Literal::Invalid(text) => text.len().saturating_mul(2),
        }
    }
}

/// Room for `sql` with `values` spliced in: sized by the values actually given (about 16
/// bytes of text per element), never by a count.
fn literal_capacity<V: Splice>(sql: &str, values: &[V]) -> usize {
    values.iter().fold(sql.len(), |acc, v| {
        acc.saturating_add(v.text_len()).saturating_add(24)
    })
}

impl ConstantPlan {
    /// Simple protocol: replaces each call by `('{...}'::real[])`, or `(NULL::real[])` where
    /// its value is None (STRICT: a NULL argument gives NULL). `values[i]` belongs to
    /// `calls()[i]`; a missing entry is rendered as NULL, extra entries are ignored. `sql`
    /// must be the text the plan was made from; any other text comes back unchanged.
    pub fn render_literals<V: Splice>(&self, sql: &str, values: &[V]) -> String {
        if !self.fits(sql, 0) {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(literal_capacity(sql, values));
        let end = self.splice_into(&mut out, sql, 0, values);
        out.push_str(&sql[end..]);
        out
    }

    /// True when every cut this plan makes lies in `sql[from..]`, in order, on character
    /// boundaries: the text is the one the plan was made from (or compatible with it).
    fn fits(&self, sql: &str, from: usize) -> bool {
        let mut pos = from;
        self.keep_name.len() == self.calls.len()
            && self.calls.iter().zip(&self.keep_name).all(|(call, name)| {
                let end = name.unwrap_or(call.span.end);
                let ok = pos <= call.span.start
                    && call.span.start <= call.span.end
                    && call.span.end <= end
                    && [call.span.start, call.span.end, end]
                        .iter()
                        .all(|&i| sql.is_char_boundary(i));
                pos = end;
                ok
            })
    }

    /// Appends `sql[from..]` up to this plan's last call, with calls replaced; returns where
    /// the copied text stopped. Callers check [`ConstantPlan::fits`] first.
    fn splice_into<V: Splice>(
        &self,
        out: &mut String,
        sql: &str,
        from: usize,
        values: &[V],
    ) -> usize {
        let mut pos = from;
        for (n, call) in self.calls.iter().enumerate() {
            out.push_str(&sql[pos..call.span.start]);
            out.push('(');
            match values.get(n) {
                Some(v) => v.splice(out),
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
    /// vanish from the text, so Postgres could not infer them), then 1021 per call. Given a
    /// text the plan was not made from, the calls stay in place (the shim serves them) and
    /// the types are declared all the same, so the extra Bind values are simply unused.
    pub fn render_params(&self, sql: &str, client_param_types: &[u32]) -> (String, Vec<u32>) {
        // `max_param` is at most MAX_PARAMS: the planner passes larger `$n` through.
        let n_client = client_param_types.len().max(self.max_param);
        let mut types = Vec::with_capacity(n_client + self.calls.len());
        types.extend_from_slice(client_param_types);
        types.resize(n_client, 0);
        for &(n, ty) in &self.hidden_params {
            if let Some(slot) = n.checked_sub(1).and_then(|i| types.get_mut(i)) {
                if *slot == 0 {
                    *slot = ty;
                }
            }
        }
        types.extend(std::iter::repeat_n(oid::REAL_ARRAY, self.calls.len()));
        if !self.fits(sql, 0) {
            return (sql.to_owned(), types);
        }
        let mut out = String::with_capacity(sql.len());
        let mut pos = 0;
        for (n, call) in self.calls.iter().enumerate() {
            out.push_str(&sql[pos..call.span.start]);
            out.push('$');
            out.push_str(&(n_client + n + 1).to_string());
            pos = self.push_name(&mut out, sql, n, call.span.end);
        }
        out.push_str(&sql[pos..]);
        (out, types)
    }

    /// Appends ` AS embed` where call `n`'s select item ends (after any `::type` suffix);
    /// returns how far the original text has been copied.
    fn push_name(&self, out: &mut String, sql: &str, n: usize, pos: usize) -> usize {
        match self.keep_name.get(n).copied().flatten() {
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
    /// The whole string with every Constant statement's calls replaced by literals;
    /// `values` follows [`QueryPlan::constant_calls`] order (missing entries render as NULL).
    /// A statement whose calls do not fit `sql` (not the planned text) is left unchanged.
    pub fn render_literals<V: Splice>(&self, sql: &str, values: &[V]) -> String {
        self.render(sql, values, None)
    }

    /// [`QueryPlan::render_literals`], and with `prefetched`, every Prefetch statement's calls
    /// replaced by their stand-ins reading those values (see [`PrefetchPlan::render_prefetched`]).
    pub fn render<V: Splice>(
        &self,
        sql: &str,
        values: &[V],
        prefetched: Option<&Prefetched>,
    ) -> String {
        let extra = prefetched.map_or(0, |p| {
            p.text_len()
                .saturating_mul(self.prefetch_queries().map(|q| q.calls.len()).sum())
        });
        let mut out = String::with_capacity(literal_capacity(sql, values).saturating_add(extra));
        let mut pos = 0;
        let mut used = 0;
        for s in &self.statements {
            match (&s.plan, prefetched) {
                (StatementPlan::Constant(c), _) => {
                    if c.fits(sql, pos) {
                        let vals = values.get(used..).unwrap_or(&[]);
                        pos = c.splice_into(&mut out, sql, pos, vals);
                    }
                    used += c.calls.len();
                }
                (StatementPlan::Prefetch(p), Some(prefetched)) if p.fits(sql, pos) => {
                    pos = p.splice_into(&mut out, sql, pos, prefetched);
                }
                _ => {}
            }
        }
        out.push_str(&sql[pos..]);
        out
    }
}

/// The values the proxy computed for the row-dependent calls of a Query string or statement,
/// as SQL expressions (e.g. `'{...}'::jsonb`): each planned call is replaced by
/// `pgml_proxy.embed(...)` / `pgml_proxy.chunk(...)` / `pgml_proxy.transform(...)` with these appended, so the values travel
/// inside the statement itself (nothing is left in the session for it to find).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefetched {
    /// Where each embedding is in `embed_values` (a `jsonb`).
    pub embed_keys: String,
    /// Every embedding, one after the other (a `real[]`).
    pub embed_values: String,
    /// Where each call's chunks are in `chunk_values` (a `jsonb`).
    pub chunk_keys: String,
    /// Every chunk, call after call (a `text[]`).
    pub chunk_values: String,
    /// pgml.transform's answers (a `jsonb`): request key (`pgml_proxy.transform_key`) ->
    /// `{"result": ...}` or `{"error": [sqlstate, message]}`.
    pub transform_values: String,
}

impl Prefetched {
    fn text_len(&self) -> usize {
        self.embed_keys.len()
            + self.embed_values.len()
            + self.chunk_keys.len()
            + self.chunk_values.len()
            + self.transform_values.len()
    }
}

impl PrefetchPlan {
    /// The statement with each call replaced by its `pgml_proxy` stand-in reading `values`;
    /// `sql` must be the text the plan was made from (any other text comes back unchanged).
    pub fn render_prefetched(&self, sql: &str, values: &Prefetched) -> String {
        if !self.fits(sql, 0) {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + values.text_len() * self.calls.len());
        let end = self.splice_into(&mut out, sql, 0, values);
        out.push_str(&sql[end..]);
        out
    }

    /// True when every call and its arguments lie in `sql[from..]`, in order, on character
    /// boundaries.
    fn fits(&self, sql: &str, from: usize) -> bool {
        let mut pos = from;
        self.calls.iter().all(|call| {
            let inside = |r: &std::ops::Range<usize>| {
                call.span.start <= r.start
                    && r.start <= r.end
                    && r.end <= call.span.end
                    && sql.is_char_boundary(r.start)
                    && sql.is_char_boundary(r.end)
            };
            // A pgml.transform call keeps its argument list whole, in the first span.
            let transform = call.function == CallFunction::Transform;
            let ok = pos <= call.span.start
                && call.span.end <= sql.len()
                && inside(&call.span)
                && call.arg_spans[0].as_ref().is_some_and(inside)
                && (transform || call.arg_spans[1].as_ref().is_some_and(inside))
                && call.arg_spans[2].as_ref().is_none_or(inside);
            pos = call.span.end;
            ok
        })
    }

    /// Appends `sql[from..]` up to the last call, with the calls replaced; returns where the
    /// copied text stopped. Callers check [`PrefetchPlan::fits`] first.
    fn splice_into(&self, out: &mut String, sql: &str, from: usize, values: &Prefetched) -> usize {
        let mut pos = from;
        for call in &self.calls {
            let arg = |i: usize| call.arg_spans[i].clone().map(|r| &sql[r]);
            out.push_str(&sql[pos..call.span.start]);
            let (name, keys, vals) = match call.function {
                CallFunction::Embed => ("embed", &values.embed_keys, &values.embed_values),
                CallFunction::Chunk => ("chunk", &values.chunk_keys, &values.chunk_values),
                CallFunction::Transform => {
                    // The client's own argument list, as written (the stand-in has
                    // pgml.transform's overloads, names and defaults), and the answers by name.
                    out.push_str("pgml_proxy.transform(");
                    out.push_str(arg(0).unwrap_or("NULL"));
                    out.push_str(", prefetched => ");
                    out.push_str(&values.transform_values);
                    out.push(')');
                    pos = call.span.end;
                    continue;
                }
            };
            // Positional, in the declared order, whatever order or notation the client used:
            // Postgres resolves the stand-in's overloads as it resolves pgml's.
            out.push_str("pgml_proxy.");
            out.push_str(name);
            out.push('(');
            out.push_str(arg(0).unwrap_or("NULL"));
            out.push_str(", ");
            out.push_str(arg(1).unwrap_or("NULL"));
            out.push_str(", ");
            out.push_str(arg(2).unwrap_or("'{}'"));
            out.push_str(", ");
            out.push_str(keys);
            out.push_str(", ");
            out.push_str(vals);
            out.push(')');
            pos = call.span.end;
        }
        pos
    }
}
