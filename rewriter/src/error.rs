//! The crate's errors and their SQLSTATE mapping. Planning never fails (anything not
//! understood is passed through); only quoting client text and binding values can be refused.

/// Errors the rewriter can report while turning values into SQL.
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

/// Errors binding a constant call's arguments to values, worded as Postgres words them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// A `$n` the client supplied no value for.
    #[error("there is no parameter ${0}")]
    NoParameter(usize),
    /// A parameter value that is not valid UTF-8 text.
    #[error("invalid byte sequence for encoding \"UTF8\"")]
    InvalidUtf8 {
        /// The 1-based parameter number.
        param: usize,
    },
    /// A concatenation longer than Postgres' largest text value (1 GB); Postgres reports its
    /// failed allocation with this internal error.
    #[error("invalid memory alloc request size {len}")]
    TooLong {
        /// The length the concatenation would have reached, in bytes.
        len: usize,
    },
    /// A non-constant argument reached constant evaluation (a bug in the caller).
    #[error("pgml-proxy: internal error: a non-constant argument reached constant evaluation")]
    NotConstant,
}

impl BindError {
    /// The SQLSTATE Postgres reports for the same condition.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            BindError::NoParameter(_) => "42P02",
            BindError::InvalidUtf8 { .. } => "22021",
            BindError::TooLong { .. } | BindError::NotConstant => "XX000",
        }
    }

    /// The DETAIL line to send with the error, if any.
    pub fn detail(&self) -> Option<String> {
        match self {
            BindError::InvalidUtf8 { param } => Some(format!(
                "pgml.embed argument ${param} is not valid UTF-8 text"
            )),
            BindError::TooLong { .. } => {
                Some("pgml.embed argument exceeds the maximum text length of 1 GB".to_owned())
            }
            BindError::NoParameter(_) | BindError::NotConstant => None,
        }
    }
}
