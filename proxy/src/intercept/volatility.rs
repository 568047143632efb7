//! Whether a prefetch query would run something with side effects: the proxy runs a statement's
//! FROM and WHERE twice (prefetch, then the statement), so it prefetches only when nothing in
//! them is VOLATILE: no function the text calls, and no view or row-security policy it reads
//! that calls one. Otherwise the upcall serves the statement, which runs everything once.

use std::collections::HashSet;

use pgml_rewriter::{quote_literal, PrefetchPlan};

use super::InterceptHook;
use crate::error::Result;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::session::io::SessionIo;

/// How many names a session remembers the volatility of (a client naming ever new functions
/// or relations must not grow it without bound).
const MAX_KNOWN_NAMES: usize = 4096;

/// Relation names are kept apart from function names in the session's table by this prefix
/// (no identifier holds a NUL).
const RELATION: char = '\0';

/// Names of the views (followed through the views they read) and row-security tables, among
/// the names listed in `{names}`, whose rules or policies call a VOLATILE function. A
/// materialized view is not followed: reading it runs nothing.
const VOLATILE_RELATIONS: &str = "
WITH RECURSIVE reached(name, rel) AS (
    SELECT c.relname::pg_catalog.text, c.oid FROM pg_catalog.pg_class c
     WHERE c.relname OPERATOR(pg_catalog.=) ANY (ARRAY[{names}]::pg_catalog.name[])
  UNION
    SELECT r.name, d.refobjid FROM reached r
      JOIN pg_catalog.pg_class v ON v.oid OPERATOR(pg_catalog.=) r.rel AND v.relkind OPERATOR(pg_catalog.=) 'v'
      JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) r.rel
      JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                                 AND d.objid OPERATOR(pg_catalog.=) w.oid
                                 AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
)
SELECT DISTINCT 'r' OPERATOR(pg_catalog.||) r.name FROM reached r
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.rel
  JOIN pg_catalog.pg_depend d ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
  JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.refobjid AND p.provolatile OPERATOR(pg_catalog.=) 'v'
 WHERE (c.relkind OPERATOR(pg_catalog.=) 'v'
        AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
        AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT w.oid FROM pg_catalog.pg_rewrite w WHERE w.ev_class OPERATOR(pg_catalog.=) r.rel))
    OR (c.relrowsecurity
        AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
        AND d.objid OPERATOR(pg_catalog.=) ANY (SELECT o.oid FROM pg_catalog.pg_policy o WHERE o.polrelid OPERATOR(pg_catalog.=) r.rel))";

/// Names of the functions among `{names}` that are VOLATILE (any schema, any overload).
const VOLATILE_FUNCTIONS: &str = "
SELECT DISTINCT 'f' OPERATOR(pg_catalog.||) p.proname::pg_catalog.text FROM pg_catalog.pg_proc p
 WHERE p.proname OPERATOR(pg_catalog.=) ANY (ARRAY[{names}]::pg_catalog.name[])
   AND p.provolatile OPERATOR(pg_catalog.=) 'v'";

impl InterceptHook {
    /// True when running the prefetch queries of `plans` could have side effects: a function
    /// they call is VOLATILE (in any schema, any overload: a name alone cannot say which one
    /// Postgres picks), or a view or policy on a relation they name (in any schema) calls one,
    /// or that cannot be read. What was read is kept for the session. The upstream must be idle.
    pub(super) async fn any_volatile<'a>(
        &mut self,
        io: &mut SessionIo,
        plans: impl IntoIterator<Item = &'a PrefetchPlan>,
    ) -> Result<bool> {
        let mut keys: Vec<String> = Vec::new();
        for plan in plans {
            keys.extend(plan.functions.iter().cloned());
            keys.extend(plan.relations.iter().map(|r| format!("{RELATION}{r}")));
        }
        let unknown: Vec<&String> = keys
            .iter()
            .filter(|k| !self.volatile.contains_key(*k))
            .collect();
        if !unknown.is_empty() {
            if io.state().transaction_status() == TransactionStatus::Failed {
                return Ok(true);
            }
            let Some(sql) = lookup_sql(&unknown) else {
                return Ok(true);
            };
            let encoding = io.state().client_encoding();
            let Some(sql) = encoding.encode(&sql) else {
                return Ok(true);
            };
            let result = self.private(io, &sql).await?;
            if result.error.is_some() || result.truncated {
                return Ok(true);
            }
            let volatile: HashSet<String> = result
                .rows
                .iter()
                .filter_map(|r| r.first().cloned().flatten())
                .filter_map(|v| encoding.decode(&v).map(|t| t.into_owned()))
                .filter_map(|tagged| match tagged.split_at_checked(1)? {
                    ("f", name) => Some(name.to_owned()),
                    ("r", name) => Some(format!("{RELATION}{name}")),
                    _ => None,
                })
                .collect();
            if self.volatile.len() + unknown.len() > MAX_KNOWN_NAMES {
                self.volatile.clear();
            }
            for key in unknown {
                self.volatile
                    .insert(key.clone(), volatile.contains(key.as_str()));
            }
        }
        Ok(keys.iter().any(|k| self.volatile.get(k) == Some(&true)))
    }
}

/// The catalog query for `keys` (function names, and relation names after `RELATION`); None
/// when a name cannot be quoted.
fn lookup_sql(keys: &[&String]) -> Option<String> {
    let (mut functions, mut relations) = (Vec::new(), Vec::new());
    for key in keys {
        match key.strip_prefix(RELATION) {
            Some(relation) => relations.push(quote_literal(relation).ok()?),
            None => functions.push(quote_literal(key).ok()?),
        }
    }
    let parts: Vec<String> = [
        (VOLATILE_FUNCTIONS, functions),
        (VOLATILE_RELATIONS, relations),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(sql, names)| format!("({})", sql.replace("{names}", &names.join(","))))
    .collect();
    Some(parts.join("\nUNION ALL\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_and_relations_are_looked_up_apart_and_quoted() {
        let f = "lower".to_owned();
        let r = format!("{RELATION}it's");
        let sql = lookup_sql(&[&f, &r]).unwrap();
        assert!(sql.contains("ARRAY['lower']"), "{sql}");
        assert!(sql.contains("ARRAY['it''s']"), "{sql}");
        assert_eq!(sql.matches("UNION ALL").count(), 1);
        let only_functions = lookup_sql(&[&f]).unwrap();
        assert!(!only_functions.contains("pg_rewrite"), "{only_functions}");
    }
}
