//! Bounds on what client text can make the rewriter allocate, scan or recurse over. Beyond
//! them the planner passes the statement through (Postgres and the shim still serve it); it
//! never fails and never sizes anything by a number the client wrote.

/// Highest `$n` the rewriter treats as a parameter: Parse and Bind count parameters in 16
/// bits, so no Bind can supply `$65536`; Postgres reports such a `$n` itself.
pub const MAX_PARAMS: usize = 65_535;

/// `pgml.embed` calls per query string (or Parse) the planner rewrites. Real statements have
/// a handful; a generated multi-row INSERT a few thousand. Beyond it: PassThrough.
pub const MAX_CALLS: usize = 10_000;

/// Statements per query string the planner plans one by one. Beyond it the whole string is
/// one PassThrough entry, so the plan never grows with a flood of `;`.
pub const MAX_STATEMENTS: usize = 10_000;

/// Parenthesis and bracket nesting depth of a statement with calls. sqlparser stops at 50
/// levels of recursion anyway; checking first keeps deep input away from every recursive path.
pub const MAX_NESTING: usize = 64;

/// Tokens the lexer produces before giving up on a text; beyond it the whole text is passed
/// through. It also bounds what sqlparser is handed: its AST costs about 500 bytes per token
/// (measured: 200,000 tokens peak at 120 MB, 2,000,000 at 1.1 GB). A 10,000-row VALUES
/// insert with one call per row is about 150,000 tokens.
pub const MAX_TOKENS: usize = 1 << 18;

/// The largest text Postgres can hold (`MaxAllocSize`, 1 GB - 1); a concatenation beyond it
/// fails in Postgres too. It bounds what `$1 || $1 || ...` can make the proxy allocate.
pub const MAX_TEXT_LEN: usize = 0x3fff_ffff;
