//! Binds a constant call's arguments to values: literals, NULL, the kwargs default, the
//! client's `$n` parameters and `||` concatenations of those (STRICT: any NULL gives NULL).
//! Where parameter values come from (Bind message, none for a simple Query) is the caller's.

use crate::call::{ArgExpr, EmbedCall};
use crate::error::BindError;
use crate::limits::MAX_TEXT_LEN;

/// A constant call's three arguments, evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BoundCall {
    /// Model name.
    pub model: String,
    /// The text to embed.
    pub text: String,
    /// kwargs JSON text (`{}` when omitted).
    pub kwargs: String,
}

/// How a caller supplies the client's `$n` values (1-based; `Ok(None)` is SQL NULL).
type ParamSource<'a> = &'a dyn Fn(usize) -> Result<Option<String>, BindError>;

impl EmbedCall {
    /// Evaluates the call's arguments; `Ok(None)` when one is NULL (the call returns NULL).
    /// `param(n)` gives the client's `$n` value (1-based; `Ok(None)` is SQL NULL).
    pub fn bind(
        &self,
        param: &dyn Fn(usize) -> Result<Option<String>, BindError>,
    ) -> Result<Option<BoundCall>, BindError> {
        let model = self.transformer.evaluate(param)?;
        let text = self.input.evaluate(param)?;
        let kwargs = self.kwargs.evaluate(param)?;
        Ok(match (model, text, kwargs) {
            (Some(model), Some(text), Some(kwargs)) => Some(BoundCall {
                model,
                text,
                kwargs,
            }),
            _ => None,
        })
    }
}

impl ArgExpr {
    /// Evaluates a constant argument; `Ok(None)` is SQL NULL.
    pub(crate) fn evaluate(&self, param: ParamSource) -> Result<Option<String>, BindError> {
        self.evaluate_within(param, MAX_TEXT_LEN)
    }

    fn evaluate_within(
        &self,
        param: ParamSource,
        max_len: usize,
    ) -> Result<Option<String>, BindError> {
        match self {
            ArgExpr::Literal(s) => Ok(Some(s.clone())),
            ArgExpr::Null => Ok(None),
            ArgExpr::Default => Ok(Some("{}".to_owned())),
            ArgExpr::Param(n) => param(*n),
            ArgExpr::Concat(parts) => {
                let mut out = String::new();
                for part in parts {
                    // The planner only puts literals, parameters and NULL in a concatenation,
                    // so this never recurses deeper than one level.
                    let value = match part {
                        ArgExpr::Concat(_) => return Err(BindError::NotConstant),
                        other => other.evaluate_within(param, max_len)?,
                    };
                    let Some(s) = value else { return Ok(None) };
                    let len = out.len().saturating_add(s.len());
                    if len > max_len {
                        return Err(BindError::TooLong { len });
                    }
                    out.push_str(&s);
                }
                Ok(Some(out))
            }
            ArgExpr::Expr { .. } => Err(BindError::NotConstant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_params(n: usize) -> Result<Option<String>, BindError> {
        Err(BindError::NoParameter(n))
    }

    #[test]
    fn concatenation_of_constants_is_evaluated_and_null_propagates() {
        let concat = ArgExpr::Concat(vec![
            ArgExpr::Literal("passage: ".into()),
            ArgExpr::Literal("hi".into()),
        ]);
        assert_eq!(
            concat.evaluate(&no_params).unwrap().as_deref(),
            Some("passage: hi")
        );
        let with_null = ArgExpr::Concat(vec![ArgExpr::Literal("a".into()), ArgExpr::Null]);
        assert_eq!(with_null.evaluate(&no_params).unwrap(), None);
        assert_eq!(
            ArgExpr::Default.evaluate(&no_params).unwrap().as_deref(),
            Some("{}")
        );
        let param = |n: usize| Ok(Some(format!("p{n}")));
        assert_eq!(
            ArgExpr::Param(2).evaluate(&param).unwrap().as_deref(),
            Some("p2")
        );
    }

    fn call(transformer: ArgExpr, input: ArgExpr, kwargs: ArgExpr) -> EmbedCall {
        EmbedCall {
            function: crate::call::CallFunction::Embed,
            span: 0..0,
            transformer,
            input,
            kwargs,
            batch: false,
            tokens: 0..0,
            arg_spans: [None, None, None],
        }
    }

    #[test]
    fn bind_evaluates_all_three_arguments_and_is_strict() {
        let c = call(
            ArgExpr::Literal("m".into()),
            ArgExpr::Concat(vec![ArgExpr::Literal("q: ".into()), ArgExpr::Param(1)]),
            ArgExpr::Default,
        );
        let param = |n: usize| Ok(Some(format!("v{n}")));
        assert_eq!(
            c.bind(&param).unwrap(),
            Some(BoundCall {
                model: "m".into(),
                text: "q: v1".into(),
                kwargs: "{}".into(),
            })
        );
        let null = |_: usize| Ok(None);
        assert_eq!(c.bind(&null).unwrap(), None);
        let missing = c.bind(&no_params).unwrap_err();
        assert_eq!(missing.sqlstate(), "42P02");
        assert_eq!(missing.to_string(), "there is no parameter $1");
        assert_eq!(missing.detail(), None);
    }

    #[test]
    fn bind_errors_carry_postgres_wording() {
        let bad = BindError::InvalidUtf8 { param: 3 };
        assert_eq!(bad.sqlstate(), "22021");
        assert_eq!(
            bad.to_string(),
            "invalid byte sequence for encoding \"UTF8\""
        );
        assert_eq!(
            bad.detail().as_deref(),
            Some("pgml.embed argument $3 is not valid UTF-8 text")
        );
        let c = call(
            ArgExpr::Expr {
                span: 0..1,
                row_dependent: true,
            },
            ArgExpr::Null,
            ArgExpr::Default,
        );
        let err = c.bind(&no_params).unwrap_err();
        assert_eq!(err, BindError::NotConstant);
        assert_eq!(err.sqlstate(), "XX000");
    }

    #[test]
    fn repeated_parameter_concatenation_stops_at_postgres_text_limit() {
        let parts = ArgExpr::Concat(vec![ArgExpr::Param(1); 2048]);
        let param = |_: usize| Ok(Some("x".repeat(1000)));
        let err = parts.evaluate_within(&param, 100_000).unwrap_err();
        assert_eq!(err, BindError::TooLong { len: 101_000 });
        assert_eq!(err.sqlstate(), "XX000");
        assert_eq!(err.to_string(), "invalid memory alloc request size 101000");
        // NULL still wins when it comes first (STRICT, evaluated left to right).
        let null_first = ArgExpr::Concat(vec![ArgExpr::Null, ArgExpr::Param(1)]);
        assert_eq!(null_first.evaluate_within(&param, 10).unwrap(), None);
    }
}
