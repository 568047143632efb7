//! What the proxy remembers of a session's prepared statements, and its bound: a statement
//! whose Parse mentions pgml is kept (its plan, and for prefetch the Parse itself, to prepare
//! it again) until it is closed or prepared again under its name. Postgres keeps prepared
//! statements without limit, but in the backend of the session that made them; the proxy is
//! shared by all sessions, and a Parse that fails upstream costs Postgres nothing while the
//! proxy would still remember it. Over the bound the session ends (FATAL 54000): forgetting a
//! statement instead would make its Binds wrong (a rewritten statement expects the extra
//! parameters only the proxy adds).

use std::mem::size_of;

use pgml_rewriter::{ArgExpr, EmbedCall};

use super::bound_prefetch::PrefetchStatement;
use super::extended::RewrittenStatement;
use super::InterceptHook;
use crate::error::{ProxyError, Result};

/// Prepared statements with pgml calls one session may have at once. Drivers cache a few
/// hundred (pgjdbc 256, psycopg 100, npgsql 200) and close the ones they evict.
pub const MAX_RETAINED_STATEMENTS: usize = 10_000;

/// Bytes those statements may take in one session, as `cost` estimates them: room for
/// thousands of ordinary statements, or a few dozen of a megabyte.
pub const MAX_RETAINED_BYTES: usize = 32 * 1024 * 1024;

/// A hash map entry, its key and the value's fixed part, roughly.
const ENTRY_OVERHEAD: usize = 256;

/// The count and bytes of what one session's statements hold.
#[derive(Debug, Default)]
pub struct RetainedStatements {
    statements: usize,
    bytes: usize,
}

impl RetainedStatements {
    /// One more statement of `cost` bytes, if it fits.
    fn admit(&mut self, cost: usize) -> Result<()> {
        if self.statements >= MAX_RETAINED_STATEMENTS {
            return Err(over_bound());
        }
        self.grow(cost)?;
        self.statements += 1;
        Ok(())
    }

    /// `more` bytes for a statement already kept, if they fit.
    pub(super) fn grow(&mut self, more: usize) -> Result<()> {
        match self.bytes.checked_add(more) {
            Some(bytes) if bytes <= MAX_RETAINED_BYTES => {
                self.bytes = bytes;
                Ok(())
            }
            _ => Err(over_bound()),
        }
    }

    /// A statement of `cost` bytes is forgotten.
    fn release(&mut self, cost: usize) {
        self.statements = self.statements.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost);
    }
}

fn over_bound() -> ProxyError {
    ProxyError::StatementsRetained {
        max_statements: MAX_RETAINED_STATEMENTS,
        max_bytes: MAX_RETAINED_BYTES,
    }
}

/// What one argument of a call holds beyond the call itself.
fn arg_cost(arg: &ArgExpr) -> usize {
    match arg {
        ArgExpr::Literal(text) => text.len(),
        ArgExpr::Concat(parts) => parts
            .iter()
            .map(|part| size_of::<ArgExpr>() + arg_cost(part))
            .sum(),
        _ => 0,
    }
}

/// What a plan's calls hold: each call, its literal arguments' text, and per call a few
/// words of bookkeeping.
fn calls_cost(calls: &[EmbedCall]) -> usize {
    calls
        .iter()
        .map(|call| {
            size_of::<EmbedCall>()
                + 2 * size_of::<usize>()
                + arg_cost(&call.transformer)
                + arg_cost(&call.input)
                + arg_cost(&call.kwargs)
        })
        .sum()
}

impl RewrittenStatement {
    /// What keeping it costs: computed from what it holds, so the same when forgotten.
    fn retained_cost(&self, name: &[u8]) -> usize {
        // Per parameter: its type, and at most one hidden-parameter entry of the plan.
        ENTRY_OVERHEAD + name.len() + calls_cost(self.plan.calls()) + 20 * self.param_types.len()
    }
}

impl PrefetchStatement {
    /// What keeping it costs: computed from what it holds (the described types included, see
    /// `InterceptHook::remember_described`), so the same when forgotten.
    fn retained_cost(&self, name: &[u8]) -> usize {
        let functions: usize = (self.plan.functions.iter())
            .chain(&self.plan.relations)
            .map(|f| f.len() + 24)
            .sum();
        ENTRY_OVERHEAD
            + name.len()
            + self.parse.as_bytes().len()
            + self.plan.query.len()
            + functions
            + calls_cost(&self.plan.calls)
            + 4 * (self.declared.len() + self.described.as_ref().map_or(0, Vec::len))
    }
}

impl InterceptHook {
    /// Forgets what the proxy remembers of statement `name` (closed, or prepared again).
    pub(super) fn forget_statement(&mut self, name: &[u8]) {
        if !self.statements.is_empty() {
            if let Some(s) = self.statements.remove(name) {
                self.retained.release(s.retained_cost(name));
            }
        }
        if !self.prefetch_statements.is_empty() {
            if let Some(s) = self.prefetch_statements.remove(name) {
                self.retained.release(s.retained_cost(name));
            }
        }
        if !self.extension_statements.is_empty() && self.extension_statements.remove(name).is_some()
        {
            self.retained.release(ENTRY_OVERHEAD + name.len());
        }
    }

    /// Remembers a rewritten statement, within the bound.
    pub(super) fn remember_rewritten(
        &mut self,
        name: &[u8],
        statement: RewrittenStatement,
    ) -> Result<()> {
        self.retained.admit(statement.retained_cost(name))?;
        self.statements.insert(name.to_owned(), statement);
        Ok(())
    }

    /// Remembers a prefetch statement, within the bound.
    pub(super) fn remember_prefetch(
        &mut self,
        name: &[u8],
        statement: PrefetchStatement,
    ) -> Result<()> {
        self.retained.admit(statement.retained_cost(name))?;
        self.prefetch_statements.insert(name.to_owned(), statement);
        Ok(())
    }

    /// Remembers an extension command's stand-in, within the bound.
    pub(super) fn remember_extension(&mut self, name: &[u8], tag: &'static str) -> Result<()> {
        self.retained.admit(ENTRY_OVERHEAD + name.len())?;
        self.extension_statements.insert(name.to_owned(), tag);
        Ok(())
    }

    /// Records the parameter types Postgres assigned to prefetch statement `name`, within
    /// the bound (a `$65535` in six bytes of text makes 65,535 of them).
    pub(super) fn remember_described(&mut self, name: &[u8], types: &[u32]) -> Result<()> {
        let Some(statement) = self.prefetch_statements.get_mut(name) else {
            return Ok(());
        };
        let before = statement.described.as_ref().map_or(0, Vec::len);
        self.retained
            .grow((4 * types.len()).saturating_sub(4 * before))?;
        statement.described = Some(types.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_counts_statements_and_bytes_and_takes_back_what_is_forgotten() {
        let mut retained = RetainedStatements::default();
        for _ in 0..MAX_RETAINED_STATEMENTS {
            retained.admit(1).unwrap();
        }
        let err = retained.admit(1).unwrap_err();
        assert_eq!(err.sqlstate(), "54000");
        assert!(
            err.detail().unwrap().contains("Close"),
            "{:?}",
            err.detail()
        );
        retained.release(1);
        retained.admit(1).unwrap();

        let mut retained = RetainedStatements::default();
        retained.admit(MAX_RETAINED_BYTES - 10).unwrap();
        assert!(retained.admit(11).is_err());
        assert!(retained.grow(usize::MAX).is_err());
        retained.grow(10).unwrap();
        retained.release(MAX_RETAINED_BYTES);
        retained.admit(MAX_RETAINED_BYTES).unwrap();
    }

    #[test]
    fn literal_text_and_concatenations_count_towards_a_call() {
        let plain = ArgExpr::Literal("x".repeat(1000));
        assert_eq!(arg_cost(&plain), 1000);
        let parts = ArgExpr::Concat(vec![ArgExpr::Literal("ab".into()), ArgExpr::Param(1)]);
        assert_eq!(arg_cost(&parts), 2 * size_of::<ArgExpr>() + 2);
        assert_eq!(arg_cost(&ArgExpr::Null), 0);
    }
}
