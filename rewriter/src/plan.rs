//! What the planner decides: the plan types the proxy matches on, and their accessors.
//! Planning lives in `planner.rs`, splicing values back into SQL in `render.rs`.

use std::ops::Range;

use crate::call::EmbedCall;
use crate::load_dataset::LoadDatasetCall;

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

/// What the proxy does with a simple-protocol Query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimpleQueryPlan {
    /// The text never mentions `pgml`: forward it untouched (nothing was lexed).
    NoPgml,
    /// Exactly one `pgml.load_dataset(...)` statement with constant arguments: the proxy runs it.
    LoadDataset(LoadDatasetCall),
    /// Anything else: the per-statement plan.
    Query(QueryPlan),
}

/// The plan for a simple-protocol Query string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryPlan {
    /// Every statement of the string, in order; empty when the text has no `pgml` at all
    /// (the fast path: nothing to do, nothing allocated). A string over the rewriter's limits
    /// (`MAX_STATEMENTS`, `MAX_TOKENS`) is one PassThrough entry spanning the whole text.
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
    /// Row-dependent arguments: run the prefetch query, then the statement with its calls
    /// reading the computed values (see [`PrefetchPlan::render_prefetched`]).
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
    /// A data-modifying CTE that the rest of the statement names (a prefetch query leaves
    /// such CTEs out, so it cannot read what they return), or one in a WITH RECURSIVE.
    DataModifyingCte,
    /// An embed call nested in another's arguments.
    NestedCall,
    /// More than one statement in an extended-protocol Parse (Postgres rejects it).
    MultipleStatements,
    /// A `$n` outside 1..=65535 (`$0`, `$65536`): no Bind can supply it, Postgres reports it.
    InvalidParameter,
    /// Over one of the rewriter's bounds (calls, statements, tokens, nesting, parameters:
    /// see the `MAX_*` constants); the shim serves the calls.
    LimitExceeded,
}

/// A statement whose every embed call has constant arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstantPlan {
    pub(crate) calls: Vec<EmbedCall>,
    /// Per call: where to append ` AS embed` so the output column keeps the name `embed`.
    pub(crate) keep_name: Vec<Option<usize>>,
    /// Client parameters that only occur inside calls, with the type Postgres would infer.
    pub(crate) hidden_params: Vec<(usize, u32)>,
    /// Highest `$n` in the statement.
    pub(crate) max_param: usize,
}

/// A statement with row-dependent calls: prefetch, then run it with the values spliced in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchPlan {
    /// SQL returning the DISTINCT rows `(f text, t text, i text, k text)` with non-NULL
    /// t, i, k: the function ([`crate::CallFunction::tag`]: `e` embed, `c` chunk),
    /// transformer (or splitter), input and kwargs normalised as `kwargs::jsonb::text`, one
    /// row per batch element. It may reference the client's `$n` parameters (bind the same
    /// values).
    pub query: String,
    /// The calls it covers, in text order.
    pub calls: Vec<EmbedCall>,
    /// The names of the functions `query` calls (lower case unless quoted, without schema),
    /// its own included: the statement runs them too, so the proxy prefetches only when none
    /// of them is VOLATILE (one with side effects would run twice).
    pub functions: Vec<String>,
    /// Every other name in `query` (relations, columns, schemas, keywords; folded like
    /// `functions`): a view among them may call a VOLATILE function the text does not show.
    pub relations: Vec<String>,
}

impl ConstantPlan {
    /// The calls to compute, in text order.
    pub fn calls(&self) -> &[EmbedCall] {
        &self.calls
    }
}

impl QueryPlan {
    /// True when no statement has constant calls to splice (Prefetch statements change only
    /// when their values are rendered in: see [`QueryPlan::render`]).
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
}
