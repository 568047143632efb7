//! Turns a constant plan back into SQL: calls replaced by `real[]` literals (simple protocol)
//! or by appended `$n` parameters (extended protocol). Only spans the planner found are cut.

use crate::call::oid;
use crate::plan::{ConstantPlan, QueryPlan, StatementPlan};
use crate::quote::push_real_array_literal;

impl ConstantPlan {
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
