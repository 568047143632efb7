//! pgml.embed interception: the `SessionHook` that plans statements with the rewriter,
//! computes constant embeddings (path 1), runs prefetches (path 2) and answers the shim's
//! upcalls (path 3). Text without `pgml` in it is relayed untouched and never parsed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgml_engine::Embedder;
use pgml_rewriter::{plan_query_with, PlanOptions, StatementPlan};

use crate::embedding::{call_key, compute, EmbedFailure, EmbedKey};
use crate::error::Result;
use crate::extended::{self, RewrittenStatement};
use crate::frame::Frame;
use crate::hook::{Interceptor, SessionHook, SessionInfo};
use crate::messages::error_response::Fields;
use crate::messages::query::Query;
use crate::messages::ready_for_query::TransactionStatus;
use crate::messages::startup::StartupMessage;
use crate::metrics::{Metrics, Path};
use crate::pgbinary::PrefetchCopy;
use crate::private;
use crate::relay::SessionIo;
use crate::shim::InstalledDatabases;
use crate::upcall::{UpcallRequest, UpcallService, MARKER};

/// Prefix of the text the proxy puts where a failed embedding would go: Postgres rejects it
/// ("malformed array literal"), failing the statement exactly where and how an error of its
/// own would, and the proxy replaces that ErrorResponse with the real error.
pub const ERROR_MARKER: &str = "pgml-proxy-error:";

/// CopyData chunk size for the prefetch table.
const COPY_CHUNK: usize = 1 << 20;

/// Interception settings.
#[derive(Clone, Debug)]
pub struct InterceptConfig {
    /// Credentials for the side connections (upcall answers, shim install); None disables path 3.
    pub service_url: Option<String>,
    /// How long the shim waits for an upcall answer.
    pub upcall_timeout: Duration,
    /// Where pgml.load_dataset finds datasets.
    pub datasets: crate::load_dataset::DatasetSettings,
}

struct Shared {
    engine: Arc<dyn Embedder>,
    upcall: UpcallService,
    installed: InstalledDatabases,
    config: InterceptConfig,
    metrics: Arc<Metrics>,
    tokens: AtomicU64,
}

/// Makes an interception hook per session; shared by all sessions.
#[derive(Clone)]
pub struct Interception {
    shared: Arc<Shared>,
}

impl Interception {
    /// Interception backed by `engine`.
    pub fn new(engine: Arc<dyn Embedder>, config: InterceptConfig, metrics: Arc<Metrics>) -> Self {
        let upcall = UpcallService::new(
            config.service_url.clone(),
            engine.clone(),
            config.upcall_timeout,
        );
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Interception {
            shared: Arc::new(Shared {
                engine,
                upcall,
                installed: InstalledDatabases::default(),
                config,
                metrics,
                tokens: AtomicU64::new(seed),
            }),
        }
    }
}

impl Interceptor for Interception {
    type Hook = InterceptHook;

    fn session(&self, info: &SessionInfo<'_>) -> InterceptHook {
        // Paired with `connection_closed` in the hook's Drop.
        self.shared.metrics.connection_opened();
        let database = info
            .startup
            .param("database")
            .or_else(|| info.startup.param("user"))
            .unwrap_or("postgres")
            .to_owned();
        let token = self
            .shared
            .tokens
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        InterceptHook {
            shared: self.shared.clone(),
            database,
            token: format!("{:016x}{:x}", token, info.id),
            failures: HashMap::new(),
            next_failure: 0,
            statements: HashMap::new(),
            describes: VecDeque::from([VecDeque::new()]),
            answered: Vec::new(),
            options: PlanOptions::default(),
        }
    }
}

/// Per-session interception state.
pub struct InterceptHook {
    shared: Arc<Shared>,
    database: String,
    token: String,
    /// Errors waiting to replace the upstream's "malformed array literal" for their marker.
    failures: HashMap<String, EmbedFailure>,
    next_failure: u64,
    /// Prepared statements whose Parse the proxy rewrote (path 1, extended protocol).
    statements: HashMap<String, RewrittenStatement>,
    /// Per pending Sync: for each Describe(statement) relayed, the client's parameter count
    /// when the ParameterDescription must hide the proxy's own parameters.
    describes: VecDeque<VecDeque<Option<usize>>>,
    /// Upcall answers to delete once the statement has ended.
    answered: Vec<String>,
    options: PlanOptions,
}

impl Drop for InterceptHook {
    fn drop(&mut self) {
        self.shared.metrics.connection_closed();
    }
}

/// True when `sql` mentions pgml at all (case-insensitive); everything else is never parsed.
pub fn mentions_pgml(sql: &str) -> bool {
    sql.as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"pgml"))
}

impl SessionHook for InterceptHook {
    fn upstream_startup(&mut self, startup: &mut StartupMessage) {
        startup.set_param("pgml_proxy.session", &self.token);
        if self.shared.config.service_url.is_none() {
            startup.set_param("pgml_proxy.upcall", "off");
        }
        startup.set_param(
            "pgml_proxy.upcall_timeout_ms",
            &self.shared.config.upcall_timeout.as_millis().to_string(),
        );
    }

    async fn on_client_message(&mut self, frame: Frame, io: &mut SessionIo) -> Result<()> {
        match frame.tag() {
            b'Q' => self.on_query(frame, io).await,
            b'P' => self.on_parse(frame, io).await,
            b'B' => self.on_bind(frame, io).await,
            b'D' => {
                self.on_describe(&frame);
                io.send_upstream(&frame);
                Ok(())
            }
            b'C' => {
                if let Some((b'S', name)) = extended::close_target(&frame) {
                    self.statements.remove(&name);
                }
                io.send_upstream(&frame);
                Ok(())
            }
            b'S' | b'F' => {
                self.describes.push_back(VecDeque::new());
                io.send_upstream(&frame);
                Ok(())
            }
            _ => {
                io.send_upstream(&frame);
                Ok(())
            }
        }
    }

    async fn on_server_message(&mut self, frame: Frame, io: &mut SessionIo) -> Result<()> {
        match frame.tag() {
            b'N' => {
                if !self.answer_if_upcall(&frame).await {
                    io.send_client(&frame);
                }
            }
            b'E' => {
                let replaced = self.replace_failure(&frame);
                io.send_client(replaced.as_ref().unwrap_or(&frame));
            }
            b't' => {
                let hide = self
                    .describes
                    .front_mut()
                    .and_then(VecDeque::pop_front)
                    .flatten();
                match hide {
                    Some(n) => {
                        io.send_client(&extended::truncate_parameter_description(&frame, n)?)
                    }
                    None => io.send_client(&frame),
                }
            }
            b'S' => {
                let fields = extended::parameter_status(&frame);
                if let Some(("standard_conforming_strings", value)) = fields {
                    self.options.standard_conforming_strings = value == "on";
                }
                io.send_client(&frame);
            }
            b'Z' => {
                self.describes.pop_front();
                if self.describes.is_empty() {
                    self.describes.push_back(VecDeque::new());
                }
                self.forget_answers();
                io.send_client(&frame);
            }
            _ => io.send_client(&frame),
        }
        Ok(())
    }
}

impl InterceptHook {
    /// Relays every response the client is still owed (answering upcalls on the way), so
    /// that the upstream is idle for private queries.
    async fn drain(&mut self, io: &mut SessionIo) -> Result<()> {
        while io.state().pending_ready() > 0 {
            let frame = io.recv_upstream().await?;
            io.state_mut().on_server(&frame)?;
            self.on_server_message(frame, io).await?;
        }
        Ok(())
    }

    /// Runs a private simple query, answering any upcall it triggers.
    async fn private(&mut self, io: &mut SessionIo, sql: &str) -> Result<private::PrivateResult> {
        let result = private::simple_query(io, sql).await?;
        for notice in &result.notices {
            self.answer_if_upcall(notice).await;
        }
        Ok(result)
    }

    async fn on_query(&mut self, frame: Frame, io: &mut SessionIo) -> Result<()> {
        let sql = Query::decode(&frame)?.sql.to_owned();
        if !mentions_pgml(&sql) {
            io.send_upstream(&frame);
            return Ok(());
        }
        if let Some(call) =
            pgml_rewriter::parse_load_dataset(&sql, self.options.standard_conforming_strings)
        {
            return self.load_dataset(io, &frame, &call).await;
        }
        let plan = plan_query_with(&sql, self.options);
        let metrics = self.shared.metrics.clone();
        let mut needs_work = false;
        for s in &plan.statements {
            match &s.plan {
                StatementPlan::Unchanged => {}
                StatementPlan::Constant(_) => {
                    metrics.statement(Path::Constant);
                    needs_work = true;
                }
                StatementPlan::Prefetch(_) => {
                    metrics.statement(Path::Prefetch);
                    needs_work = true;
                }
                StatementPlan::PassThrough { .. } => metrics.statement(Path::Upcall),
            }
        }
        if plan
            .statements
            .iter()
            .all(|s| matches!(s.plan, StatementPlan::Unchanged))
        {
            io.send_upstream(&frame);
            return Ok(());
        }
        self.drain(io).await?;
        self.ensure_shim(io).await?;
        if !needs_work || io.state().transaction_status() == TransactionStatus::Failed {
            io.send_upstream(&frame);
            return Ok(());
        }

        // Path 1: constant arguments.
        let no_params = |n: usize| -> std::result::Result<Option<String>, EmbedFailure> {
            Err(EmbedFailure {
                sqlstate: "42P02".into(),
                message: format!("there is no parameter ${n}"),
                detail: None,
            })
        };
        let constant_keys: Vec<_> = plan
            .constant_calls()
            .map(|call| call_key(call, &no_params))
            .collect();

        // Path 2: prefetch (inside a savepoint in an explicit transaction, so a failure
        // leaves the client's transaction as it was; the shim then upcalls instead).
        let in_transaction = io.state().transaction_status() == TransactionStatus::InTransaction;
        let prefetches: Vec<String> = plan.prefetch_queries().map(|p| p.query.clone()).collect();
        let mut prefetch_keys = Vec::new();
        if !prefetches.is_empty() {
            if in_transaction {
                self.private(io, "SAVEPOINT pgml_proxy_prefetch").await?;
            }
            for query in &prefetches {
                let started = std::time::Instant::now();
                let result = self.private(io, query).await?;
                tracing::debug!(rows = result.rows.len(), elapsed = ?started.elapsed(), "prefetch query ran");
                if let Some(error) = &result.error {
                    let fields = Fields::decode(error);
                    tracing::debug!(error = ?fields.message(), "prefetch query failed; the shim will upcall");
                    if in_transaction {
                        self.private(io, "ROLLBACK TO SAVEPOINT pgml_proxy_prefetch")
                            .await?;
                    }
                    continue;
                }
                for row in result.rows {
                    if let [Some(model), Some(text), Some(kwargs)] = row.as_slice() {
                        let (Ok(model), Ok(text), Ok(kwargs)) = (
                            std::str::from_utf8(model),
                            std::str::from_utf8(text),
                            std::str::from_utf8(kwargs),
                        ) else {
                            continue;
                        };
                        prefetch_keys.push(EmbedKey {
                            model: model.to_owned(),
                            kwargs: kwargs.to_owned(),
                            text: text.to_owned(),
                        });
                    }
                }
            }
        }

        let wanted = constant_keys
            .iter()
            .filter_map(|k| k.as_ref().ok().and_then(Option::clone))
            .chain(prefetch_keys.iter().cloned());
        let started = std::time::Instant::now();
        let computed = compute(self.shared.engine.as_ref(), wanted).await;
        metrics.embeddings(computed.len());
        tracing::debug!(values = computed.len(), elapsed = ?started.elapsed(), "embeddings computed");

        if !prefetch_keys.is_empty() {
            let started = std::time::Instant::now();
            let loaded = self.load_prefetch(io, &prefetch_keys, &computed).await?;
            tracing::debug!(rows = prefetch_keys.len(), loaded, elapsed = ?started.elapsed(), "prefetch table loaded");
            if !loaded && in_transaction {
                self.private(io, "ROLLBACK TO SAVEPOINT pgml_proxy_prefetch")
                    .await?;
            }
        }
        if !prefetches.is_empty() && in_transaction {
            self.private(io, "RELEASE SAVEPOINT pgml_proxy_prefetch")
                .await?;
        }

        if plan.is_unchanged_text() {
            io.send_upstream(&frame);
            return Ok(());
        }
        // The first failure among the constants fails the statement (as Postgres would fail
        // it while planning the constant).
        let mut values = Vec::new();
        for key in &constant_keys {
            let value = match key {
                Err(failure) => Err(failure.clone()),
                Ok(None) => Ok(None),
                Ok(Some(key)) => match computed.get(key) {
                    Some(Ok(v)) => Ok(Some(v.as_ref().clone())),
                    Some(Err(failure)) => Err(failure.clone()),
                    None => Ok(None),
                },
            };
            match value {
                Ok(v) => values.push(v),
                Err(failure) => return self.fail_statement(io, failure).await,
            }
        }
        let rewritten = plan.render_literals(&sql, &values);
        io.send_upstream(&Query::encode(&rewritten));
        Ok(())
    }

    /// Executes `SELECT * FROM pgml.load_dataset(...)` on the session and answers it.
    async fn load_dataset(
        &mut self,
        io: &mut SessionIo,
        frame: &Frame,
        call: &pgml_rewriter::LoadDatasetCall,
    ) -> Result<()> {
        self.drain(io).await?;
        if io.state().transaction_status() == TransactionStatus::Failed {
            io.send_upstream(frame);
            return Ok(());
        }
        let datasets = self.shared.config.datasets.clone();
        match crate::load_dataset::run(io, call, &datasets).await? {
            crate::load_dataset::Outcome::Loaded(table, rows) => {
                tracing::info!(%table, rows, "pgml.load_dataset loaded");
                for f in crate::load_dataset::result_frames(call, &table, rows) {
                    io.send_client(&f);
                }
                let status = match io.state().transaction_status() {
                    TransactionStatus::Idle => b'I',
                    TransactionStatus::InTransaction => b'T',
                    TransactionStatus::Failed => b'E',
                };
                io.send_client(&Frame::new(b'Z', &[status]));
                Ok(())
            }
            crate::load_dataset::Outcome::Failed(failure) => self.fail_statement(io, failure).await,
        }
    }

    /// Fails the client's statement with `failure`, inside Postgres (so an explicit
    /// transaction is failed exactly as Postgres would fail it).
    async fn fail_statement(&mut self, io: &mut SessionIo, failure: EmbedFailure) -> Result<()> {
        let marker = self.remember_failure(failure);
        let sql = format!("SELECT '{marker}'::real[]");
        io.send_upstream(&Query::encode(&sql));
        Ok(())
    }

    /// Records a failure and returns the marker text that stands for it.
    pub(crate) fn remember_failure(&mut self, failure: EmbedFailure) -> String {
        self.next_failure += 1;
        let marker = format!("{ERROR_MARKER}{}", self.next_failure);
        self.failures.insert(marker.clone(), failure);
        marker
    }

    /// The client's error for an upstream ErrorResponse caused by a failure marker.
    fn replace_failure(&mut self, frame: &Frame) -> Option<Frame> {
        if self.failures.is_empty() {
            return None;
        }
        let fields = Fields::decode(frame);
        let message = fields.message()?;
        let start = message.find(ERROR_MARKER)?;
        let digits: String = message[start + ERROR_MARKER.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let failure = self.failures.remove(&format!("{ERROR_MARKER}{digits}"))?;
        Some(extended::error_frame(&failure))
    }

    /// Fills the session's prefetch table with the computed values; false when it could not.
    async fn load_prefetch(
        &mut self,
        io: &mut SessionIo,
        keys: &[EmbedKey],
        computed: &crate::embedding::Computed,
    ) -> Result<bool> {
        let setup = "CREATE TEMP TABLE IF NOT EXISTS pgml_prefetch \
                     (transformer text, input text, kwargs jsonb, embedding real[]); \
                     CREATE INDEX IF NOT EXISTS pgml_prefetch_input ON pgml_prefetch USING hash (input); \
                     TRUNCATE pgml_prefetch";
        let result = self.private(io, setup).await?;
        if result.error.is_some() {
            return Ok(false);
        }
        let mut copy = PrefetchCopy::new();
        let mut chunks = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            if let Some(Ok(v)) = computed.get(key) {
                copy.row(&key.model, &key.text, &key.kwargs, v);
                if copy.len() >= COPY_CHUNK {
                    chunks.push(copy.take());
                }
            }
        }
        chunks.push(copy.finish());
        let result =
            private::copy_in(io, "COPY pgml_prefetch FROM STDIN (FORMAT binary)", chunks).await?;
        Ok(result.error.is_none())
    }

    /// Installs the shim through the service connection (when there is one), once per
    /// database; failures are logged and the statement goes on (Postgres reports what is missing).
    async fn ensure_shim_via_service(&self) {
        let shared = &self.shared;
        if shared.config.service_url.is_none() || shared.installed.contains(&self.database).await {
            return;
        }
        match shared.upcall.ensure_shim(&self.database).await {
            Ok(()) => shared.installed.insert(&self.database).await,
            Err(e) => {
                tracing::warn!(database = %self.database, error = %e, "could not install the pgml shim")
            }
        }
    }

    /// Installs the shim in this session's database once per proxy process: through the
    /// service connection when there is one, else on the session itself when it is idle.
    async fn ensure_shim(&mut self, io: &mut SessionIo) -> Result<()> {
        let shared = self.shared.clone();
        if shared.installed.contains(&self.database).await {
            return Ok(());
        }
        if shared.config.service_url.is_some() {
            self.ensure_shim_via_service().await;
            return Ok(());
        }
        if io.state().transaction_status() != TransactionStatus::Idle {
            return Ok(());
        }
        let current = self.private(io, crate::shim::VERSION_QUERY).await?;
        let installed = current
            .rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .map(|v| v.as_ref() == crate::shim::SHIM_VERSION.as_bytes())
            .unwrap_or(false);
        if !installed {
            let result = self.private(io, &crate::shim::install_script()).await?;
            if let Some(error) = result.error {
                tracing::warn!(database = %self.database, error = ?Fields::decode(&error).message(), "could not install the pgml shim");
                if io.state().transaction_status() == TransactionStatus::Failed {
                    self.private(io, "ROLLBACK").await?;
                }
                return Ok(());
            }
        }
        shared.installed.insert(&self.database).await;
        Ok(())
    }

    /// Answers the shim's upcall NOTICE; false when the notice is not one (relay it).
    async fn answer_if_upcall(&mut self, frame: &Frame) -> bool {
        let fields = Fields::decode(frame);
        let Some(message) = fields.message() else {
            return false;
        };
        if !message.starts_with(MARKER) {
            return false;
        }
        let Some(request) = UpcallRequest::from_notice(message, fields.get(b'D')) else {
            tracing::warn!("malformed upcall notice dropped");
            return true;
        };
        self.shared.metrics.upcall();
        let id = request.id.clone();
        match self.shared.upcall.answer(&self.database, request).await {
            Ok(()) => self.answered.push(id),
            Err(e) => tracing::warn!(error = %e, "could not answer an upcall"),
        }
        true
    }

    fn forget_answers(&mut self) {
        if self.answered.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.answered);
        let shared = self.shared.clone();
        let database = self.database.clone();
        tokio::spawn(async move { shared.upcall.forget(&database, ids).await });
    }

    fn on_describe(&mut self, frame: &Frame) {
        let hide = match extended::describe_target(frame) {
            Some((b'S', name)) => Some(self.statements.get(&name).map(|s| s.client_params)),
            _ => None,
        };
        if let Some(hide) = hide {
            if let Some(batch) = self.describes.back_mut() {
                batch.push_back(hide);
            }
        }
    }

    async fn on_parse(&mut self, frame: Frame, io: &mut SessionIo) -> Result<()> {
        let parse = crate::messages::parse::Parse::decode(&frame)?;
        self.statements.remove(parse.name);
        if !mentions_pgml(parse.sql) {
            io.send_upstream(&frame);
            return Ok(());
        }
        let plan = pgml_rewriter::plan_statement_with(parse.sql, &parse.param_types, self.options);
        let StatementPlan::Constant(constant) = plan else {
            if !matches!(plan, StatementPlan::Unchanged) {
                self.shared.metrics.statement(Path::Upcall);
                // Mid-pipeline: only the service connection can install the shim here.
                self.ensure_shim_via_service().await;
            }
            io.send_upstream(&frame);
            return Ok(());
        };
        self.shared.metrics.statement(Path::Constant);
        let (sql, types) = constant.render_params(parse.sql, &parse.param_types);
        let client_params = types.len() - constant.calls().len();
        let name = parse.name.to_owned();
        let rewritten = crate::messages::parse::Parse {
            name: &name,
            sql: &sql,
            param_types: types.clone(),
        }
        .encode();
        io.send_upstream(&rewritten);
        self.statements.insert(
            name,
            RewrittenStatement {
                plan: constant,
                client_params,
                param_types: types,
            },
        );
        Ok(())
    }

    async fn on_bind(&mut self, frame: Frame, io: &mut SessionIo) -> Result<()> {
        let rewritten = !self.statements.is_empty()
            && extended::bind_statement(&frame)
                .is_some_and(|name| self.statements.contains_key(name));
        if !rewritten {
            io.send_upstream(&frame);
            return Ok(());
        }
        let bind = extended::BindValues::decode(&frame)?;
        let Some(statement) = self.statements.get(&bind.statement) else {
            io.send_upstream(&frame);
            return Ok(());
        };
        if bind.values.len() != statement.client_params {
            // Postgres reports the count mismatch itself.
            io.send_upstream(&frame);
            return Ok(());
        }
        let calls = statement.plan.calls().to_vec();
        let param = |n: usize| -> std::result::Result<Option<String>, EmbedFailure> {
            bind.text_param(n, &statement.param_types)
        };
        let keys: Vec<_> = calls.iter().map(|call| call_key(call, &param)).collect();
        let computed = compute(
            self.shared.engine.as_ref(),
            keys.iter()
                .filter_map(|k| k.as_ref().ok().and_then(Option::clone)),
        )
        .await;
        self.shared.metrics.embeddings(computed.len());
        let mut extra = Vec::with_capacity(keys.len());
        for key in keys {
            let value = match key {
                Err(failure) => extended::ExtraParam::Failure(self.remember_failure(failure)),
                Ok(None) => extended::ExtraParam::Null,
                Ok(Some(key)) => match computed.get(&key) {
                    Some(Ok(v)) => extended::ExtraParam::Vector(v.clone()),
                    Some(Err(failure)) => {
                        extended::ExtraParam::Failure(self.remember_failure(failure.clone()))
                    }
                    None => extended::ExtraParam::Null,
                },
            };
            extra.push(value);
        }
        io.send_upstream(&bind.with_extra_params(&extra));
        Ok(())
    }
}
