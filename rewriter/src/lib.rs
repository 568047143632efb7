//! pgml-rewriter: SQL text in, execution plan out. No I/O, no async.
