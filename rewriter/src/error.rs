//! The crate's one error type and its SQLSTATE mapping. Planning never fails (anything not
//! understood is passed through); only quoting client text can be refused.

/// Errors the rewriter can report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// Postgres text cannot hold a NUL character.
    #[error("invalid byte sequence for encoding \"UTF8\": 0x00")]
    NulInLiteral,
}

impl RewriteError {
    /// The SQLSTATE Postgres itself reports for the same condition.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            RewriteError::NulInLiteral => "22021",
        }
    }
}
