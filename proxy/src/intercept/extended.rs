//! Path 1 in the extended protocol: a Parse whose pgml.embed calls have constant arguments is
//! rewritten with one extra `real[]` parameter per call; each Bind of it gets the computed
//! values appended; a ParameterDescription of it hides the extra parameters again.

use std::collections::VecDeque;

use pgml_rewriter::{mentions_pgml, BindError, ConstantPlan, StatementPlan};

use super::bound_prefetch::PrefetchStatement;
use super::embedding::{bind_calls, compute, lookup};
use super::InterceptHook;
use crate::error::Result;
use crate::metrics::Path;
use crate::net::encoding::ClientEncoding;
use crate::net::frame::Frame;
use crate::net::messages::bind::{Bind, ExtraValue};
use crate::net::messages::close::{Close, Target};
use crate::net::messages::describe::Describe;
use crate::net::messages::parameter_description;
use crate::net::messages::parse::Parse;
use crate::net::pgbinary::{encode_real_array, text_param_bytes};
use crate::session::io::SessionIo;

/// A prepared statement whose Parse the proxy rewrote.
#[derive(Debug, Clone)]
pub struct RewrittenStatement {
    /// The plan (its calls and how the client's parameters feed them).
    pub plan: ConstantPlan,
    /// How many parameters the client sees (and binds).
    pub client_params: usize,
    /// Parameter types declared upstream (the client's first, then one `real[]` per call).
    pub param_types: Vec<u32>,
}

/// Parameter `$n` (1-based) of a Bind as text, for a pgml.embed argument.
fn text_param(
    bind: &Bind<'_>,
    n: usize,
    types: &[u32],
    encoding: ClientEncoding,
) -> std::result::Result<Option<String>, BindError> {
    let Some(i) = n.checked_sub(1).filter(|&i| i < bind.values.len()) else {
        return Err(BindError::NoParameter(n));
    };
    let Some(bytes) = bind.values[i] else {
        return Ok(None);
    };
    let oid = types.get(i).copied().unwrap_or(0);
    encoding
        .decode(text_param_bytes(bytes, bind.format_of(i) == 1, oid))
        .map(|text| Some(text.into_owned()))
        .ok_or(BindError::InvalidUtf8 { param: n })
}

impl InterceptHook {
    pub(super) async fn on_parse(
        &mut self,
        frame: &Frame,
        parse: Parse<'_>,
        io: &mut SessionIo,
    ) -> Result<()> {
        self.forget_statement(parse.name);
        if !mentions_pgml(parse.sql) {
            io.send_upstream(frame);
            return Ok(());
        }
        let encoding = io.state().client_encoding();
        let Some(sql) = encoding.decode(parse.sql) else {
            io.send_upstream(frame);
            return Ok(());
        };
        if let Some(command) = super::extension::parse(&sql) {
            return self.on_extension_parse(&command, &parse, io).await;
        }
        let plan =
            pgml_rewriter::plan_statement_with(&sql, &parse.param_types, super::plan_options(io));
        if let StatementPlan::Prefetch(prefetch) = plan {
            self.shared.metrics.statement(Path::Prefetch);
            self.remember_prefetch(
                parse.name,
                PrefetchStatement {
                    plan: prefetch,
                    declared: parse.param_types.clone(),
                    described: None,
                    // Its own copy: the frame shares the read buffer's allocation, which
                    // may be far larger (the rest of a large read).
                    parse: frame.unshared(),
                },
            )?;
            io.send_upstream(frame);
            return Ok(());
        }
        let StatementPlan::Constant(constant) = plan else {
            if !matches!(plan, StatementPlan::Unchanged) {
                self.shared.metrics.statement(Path::Upcall);
                // Mid-pipeline: only the service connection can install the shim here.
                self.ensure_shim_via_service().await;
            }
            io.send_upstream(frame);
            return Ok(());
        };
        self.shared.metrics.statement(Path::Constant);
        let (rendered, types) = constant.render_params(&sql, &parse.param_types);
        let Some(rendered) = encoding.encode(&rendered) else {
            io.send_upstream(frame);
            return Ok(());
        };
        let client_params = types.len().saturating_sub(constant.calls().len());
        let rewritten = Parse {
            name: parse.name,
            sql: &rendered,
            param_types: types.clone(),
        }
        .encode();
        io.send_upstream(&rewritten);
        self.remember_rewritten(
            parse.name,
            RewrittenStatement {
                plan: constant,
                client_params,
                param_types: types,
            },
        )
    }

    pub(super) async fn on_bind(
        &mut self,
        frame: &Frame,
        statement: &[u8],
        io: &mut SessionIo,
    ) -> Result<()> {
        self.on_extension_bind(frame);
        if !self.prefetch_statements.is_empty() && self.prefetch_statements.contains_key(statement)
        {
            return self.bind_prefetch(frame, io).await;
        }
        let rewritten = !self.statements.is_empty() && self.statements.contains_key(statement);
        if !rewritten {
            io.send_upstream(frame);
            return Ok(());
        }
        let bind = Bind::decode(frame)?;
        let Some(statement) = self.statements.get(bind.statement) else {
            io.send_upstream(frame);
            return Ok(());
        };
        io.state_mut().clock_mut().note(Path::Constant);
        if bind.values.len() != statement.client_params {
            // Postgres reports the count mismatch itself.
            io.send_upstream(frame);
            return Ok(());
        }
        let encoding = io.state().client_encoding();
        let param = |n: usize| text_param(&bind, n, &statement.param_types, encoding);
        let keys = bind_calls(statement.plan.calls(), &param);
        let computed = compute(
            self.shared.engine.as_ref(),
            &self.cache_partition,
            keys.iter()
                .filter_map(|k| k.as_ref().ok().and_then(Option::clone)),
        )
        .await;
        self.shared.metrics.embeddings(computed.len());
        let extra: Vec<ExtraValue> = keys
            .into_iter()
            .map(|key| match lookup(key, &computed) {
                Ok(v) => ExtraValue {
                    format: 1,
                    value: v.map(encode_real_array),
                },
                // The marker goes as text: Postgres rejects it as a `real[]`.
                Err(failure) => ExtraValue {
                    format: 0,
                    value: Some(self.failures.remember(failure).into_bytes().into()),
                },
            })
            .collect();
        io.send_upstream(&bind.encode_with(&extra));
        Ok(())
    }

    pub(super) fn on_describe(&mut self, describe: &Describe<'_>) {
        if describe.target != Target::Statement {
            return;
        }
        let hide = self.statements.get(describe.name).map(|s| s.client_params);
        if let Some(batch) = self.describes.back_mut() {
            batch.push_back(hide);
        }
    }

    pub(super) fn on_close(&mut self, close: &Close<'_>) {
        if close.target == Target::Statement {
            self.forget_statement(close.name);
        }
    }

    /// The ParameterDescription the client sees, when it differs from the upstream's.
    pub(super) fn on_parameter_description(&mut self, frame: &Frame) -> Result<Option<Frame>> {
        let hide = self
            .describes
            .front_mut()
            .and_then(VecDeque::pop_front)
            .flatten();
        hide.map(|n| parameter_description::truncate(frame, n))
            .transpose()
    }
}
