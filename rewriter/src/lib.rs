//! pgml-rewriter: SQL text in, execution plan out. No I/O, no async.
//! Finds `pgml.embed(...)` calls, classifies their arguments and plans how the proxy serves
//! them (splice constants, prefetch row-dependent values, or pass through to the shim).

mod bind;
mod call;
mod classify;
mod error;
mod lexer;
mod limits;
mod literal;
mod load_dataset;
mod plan;
mod planner;
mod position;
mod prefetch;
mod quote;
mod render;
mod source;
mod statement;

pub use bind::BoundCall;
pub use call::{ArgExpr, CallFunction, EmbedCall};
pub use error::{BindError, RewriteError};
pub use lexer::token_spans;
pub use limits::{MAX_CALLS, MAX_NESTING, MAX_PARAMS, MAX_STATEMENTS, MAX_TEXT_LEN, MAX_TOKENS};
pub use load_dataset::LoadDatasetCall;
pub use plan::{
    ConstantPlan, PassThroughReason, PlanOptions, PlannedStatement, PrefetchPlan, QueryPlan,
    SimpleQueryPlan, StatementPlan,
};
pub use planner::{
    mentions_pgml, plan_query, plan_query_with, plan_simple_query, plan_statement,
    plan_statement_with,
};
pub use quote::{format_real_array, quote_literal};
pub use render::{Literal, Prefetched, Splice};

/// Type OID of `real[]`, the type of the parameters `render_params` appends.
pub const REAL_ARRAY_OID: u32 = 1021;
