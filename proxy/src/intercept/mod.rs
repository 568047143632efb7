//! pgml.* interception: the `SessionHook` that plans statements with the rewriter and serves
//! them. This file dispatches; each path has its own room: `simple` (constant arguments in a
//! Query), `extended` (Parse/Bind/Describe), `prefetch` (row-dependent arguments), `upcall`
//! (the shim's NOTICEs from server-side code), `shim` (installing it upstream), `failure`
//! (errors raised inside Postgres), `load_dataset`. Text without `pgml` is never parsed.
//! No framing or socket code lives here: messages come typed from `net::messages`.

pub mod bound_prefetch;
pub mod embedding;
pub mod extended;
pub mod extension;
pub mod failure;
pub mod load_dataset;
mod plain;
pub mod prefetch;
pub mod private;
mod retention;
pub mod shim;
pub mod simple;
pub mod upcall;
mod volatility;
pub mod wrap;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use pgml_engine::{Embedder, Ranker};
use pgml_rewriter::PlanOptions;

use crate::error::Result;
use crate::metrics::{MeteredEmbedder, Metrics};
use crate::net::frame::Frame;
use crate::net::messages::client::ClientMessage;
use crate::net::messages::{client_tag, server_tag};
use crate::session::hook::{ConnectionEvent, Interceptor, SessionHook, SessionInfo};
use crate::session::io::SessionIo;
use crate::session::state::SessionState;
use bound_prefetch::{AddedMessages, PrefetchStatement};
use extended::RewrittenStatement;
use failure::Failures;
use retention::RetainedStatements;
use shim::InstalledDatabases;
use upcall::UpcallService;

pub use failure::ERROR_MARKER;

/// Interception settings.
#[derive(Clone, Debug)]
pub struct InterceptConfig {
    /// Credentials for the side connections (upcall answers, shim install); None disables path 3.
    pub service_url: Option<String>,
    /// TLS for the side connections (`--upstream-sslmode`; the URL's own `sslmode=` may be
    /// stricter).
    pub service_sslmode: crate::net::upstream::SslMode,
    /// Where to send a CancelRequest that ends a statement waiting for an answer that will
    /// not come (refused or failed); None: the statement waits for the shim's timeout.
    pub cancel_via: Option<crate::net::upstream::Upstream>,
    /// How long the shim waits for an upcall answer.
    pub upcall_timeout: Duration,
    /// At most this many service connections (all databases, installs included).
    pub service_connections_max: usize,
    /// Cached embeddings are reused only within the role that computed them (`--cache-scope
    /// role`): the time a call takes then says nothing about other roles' texts.
    pub cache_per_role: bool,
    /// Where pgml.load_dataset finds datasets.
    pub datasets: load_dataset::DatasetSettings,
}

struct Shared {
    engine: Arc<dyn Embedder>,
    upcall: UpcallService,
    installed: InstalledDatabases,
    /// Databases whose missing shim was logged.
    missing_warned: InstalledDatabases,
    /// Held while the service connection installs or checks a shim: sessions arriving at once
    /// in a new database wait for the one check instead of each taking a service connection.
    install_turn: tokio::sync::Mutex<()>,
    config: InterceptConfig,
    metrics: Arc<Metrics>,
}

/// Makes an interception hook per session; shared by all sessions.
#[derive(Clone)]
pub struct Interception {
    shared: Arc<Shared>,
}

impl Interception {
    /// Interception backed by `engine` (each embed call timed into `metrics`), `ranker` and
    /// `generator` (pgml.transform's model servers).
    pub fn new(
        engine: Arc<dyn Embedder>,
        ranker: Arc<dyn Ranker>,
        generator: Arc<pgml_engine::Generator>,
        config: InterceptConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let engine: Arc<dyn Embedder> = Arc::new(MeteredEmbedder::new(engine, metrics.clone()));
        let upcall = UpcallService::new(
            config.service_url.clone(),
            config.service_sslmode,
            engine.clone(),
            ranker,
            generator,
            config.upcall_timeout,
            config.service_connections_max,
        );
        Interception {
            shared: Arc::new(Shared {
                engine,
                upcall,
                installed: InstalledDatabases::default(),
                missing_warned: InstalledDatabases::default(),
                install_turn: tokio::sync::Mutex::new(()),
                config,
                metrics,
            }),
        }
    }
}

impl Interceptor for Interception {
    type Hook = InterceptHook;

    fn connection_event(&self, event: ConnectionEvent) {
        self.shared.metrics.connection_event(event);
    }

    fn session(&self, info: &SessionInfo<'_>) -> InterceptHook {
        // Paired with `connection_closed` in the hook's Drop.
        self.shared.metrics.connection_opened();
        let database = info
            .startup
            .param("database")
            .or_else(|| info.startup.param("user"))
            .unwrap_or("postgres")
            .to_owned();
        // The role the client authenticated as (SET ROLE does not change it; only a superuser
        // may SET SESSION AUTHORIZATION).
        let cache_partition = match self.shared.config.cache_per_role {
            true => info.startup.param("user").unwrap_or_default().to_owned(),
            false => String::new(),
        };
        InterceptHook {
            shared: self.shared.clone(),
            database,
            cache_partition,
            failures: Failures::default(),
            statements: HashMap::new(),
            prefetch_statements: HashMap::new(),
            extension_statements: HashMap::new(),
            retained: RetainedStatements::default(),
            extension_portals: HashMap::new(),
            pending_tags: VecDeque::new(),
            batch_clean: true,
            skip_to_sync: false,
            describes: VecDeque::from([VecDeque::new()]),
            answered: Vec::new(),
            streams: Vec::new(),
            cursor_closed: false,
            added: AddedMessages::default(),
            wrapped: false,
            volatile: HashMap::new(),
        }
    }
}

/// Per-session interception state.
pub struct InterceptHook {
    shared: Arc<Shared>,
    database: String,
    /// Whose cached embeddings this session may reuse: "" (everyone's) unless the cache is
    /// scoped per role.
    cache_partition: String,
    /// Errors waiting to replace the upstream's for their marker (or for its cancellation).
    failures: Failures,
    /// Prepared statements whose Parse the proxy rewrote (path 1, extended protocol), by name.
    statements: HashMap<Vec<u8>, RewrittenStatement>,
    /// Prepared statements with row-dependent calls (path 2, extended protocol), by name.
    prefetch_statements: HashMap<Vec<u8>, PrefetchStatement>,
    /// Prepared stand-ins of `CREATE/DROP EXTENSION pgml`, with the tag they answer with.
    extension_statements: HashMap<Vec<u8>, &'static str>,
    /// What those three maps hold, within the bound (`retention`).
    retained: RetainedStatements,
    /// Portals bound from those stand-ins.
    extension_portals: HashMap<Vec<u8>, &'static str>,
    /// Tags to give the next `DO` CommandCompletes (the stand-ins' own), in order.
    pending_tags: VecDeque<&'static str>,
    /// Nothing but Parse, Describe, Close and Flush relayed since the last Sync: the batch
    /// can be ended early without committing anything (see `bound_prefetch`).
    batch_clean: bool,
    /// The proxy ended a batch early and it had failed: the client's messages are dropped up
    /// to its Sync, as Postgres would have skipped them.
    skip_to_sync: bool,
    /// Per pending Sync: for each Describe(statement) relayed, the client's parameter count
    /// when the ParameterDescription must hide the proxy's own parameters.
    describes: VecDeque<VecDeque<Option<usize>>>,
    /// Upcall answers to delete once the statement has ended.
    answered: Vec<String>,
    /// pgml.transform_stream requests this session started in its current transaction (their
    /// writers stop when it ends; see `end_streams_if_idle`).
    streams: Vec<String>,
    /// A `CLOSE` of a cursor completed while `streams` had some (see `end_streams_if_unread`).
    cursor_closed: bool,
    /// Messages the proxy added to the client's batch (see `bound_prefetch`), whose
    /// responses are not the client's to see.
    added: AddedMessages,
    /// The proxy opened a transaction for a prefetched statement sent in autocommit (see
    /// `wrap`); it ends with the ReadyForQuery that ends the statement.
    wrapped: bool,
    /// Function names seen in prefetch queries, and whether one of that name is VOLATILE.
    volatile: HashMap<String, bool>,
}

/// How the rewriter must read this session's SQL text now.
fn plan_options(io: &SessionIo) -> PlanOptions {
    PlanOptions {
        standard_conforming_strings: io.state().standard_conforming_strings(),
    }
}

impl Drop for InterceptHook {
    fn drop(&mut self) {
        self.shared.metrics.connection_closed();
    }
}

impl SessionHook for InterceptHook {
    fn client_plain(&self, tag: u8, body: &[u8], state: &SessionState) -> bool {
        self.plain_client(tag, body, state)
    }

    fn on_plain_client(&mut self, tag: u8, body: &[u8], state: &SessionState) {
        self.on_plain_client_message(tag, body, state);
    }

    fn server_plain(&self, tag: u8, _body: &[u8]) -> bool {
        self.plain_server(tag)
    }

    fn on_plain_server(&mut self, tag: u8, state: &mut SessionState) {
        self.on_plain_server_message(tag, state);
    }

    async fn on_client_message(
        &mut self,
        frame: &Frame,
        message: ClientMessage<'_>,
        io: &mut SessionIo,
    ) -> Result<()> {
        self.finish_wrap(io).await?;
        if self.skip_to_sync {
            match message {
                ClientMessage::Sync => self.skip_to_sync = false,
                ClientMessage::Terminate => {}
                _ => return Ok(()),
            }
        }
        if io.state().upstream_skipping()
            && !matches!(message, ClientMessage::Sync | ClientMessage::Terminate)
        {
            // Postgres discards it (an error ended the batch): nothing of it is the proxy's.
            io.send_upstream(frame);
            return Ok(());
        }
        if !io.state().in_step() {
            // What the upstream still owes is not known exactly (a COPY failed with Syncs
            // inside): a Bind must not end the batch with a Sync of the proxy's own.
            self.batch_clean = false;
        }
        // Applied once this message is handled (a Bind reads the state before it).
        let clean_after = match message {
            ClientMessage::Parse(_) | ClientMessage::Describe(_) | ClientMessage::Close(_) => {
                self.batch_clean
            }
            ClientMessage::Other => self.batch_clean && frame.tag() == client_tag::FLUSH,
            ClientMessage::Bind { .. } => false,
            _ => true,
        };
        let handled = match message {
            ClientMessage::Query(query) => self.on_query(frame, query.sql, io).await,
            ClientMessage::Parse(parse) => self.on_parse(frame, parse, io).await,
            ClientMessage::Bind { statement } => self.on_bind(frame, statement, io).await,
            ClientMessage::Describe(describe) => {
                self.on_describe(&describe);
                io.send_upstream(frame);
                Ok(())
            }
            ClientMessage::Close(close) => {
                self.on_close(&close);
                io.send_upstream(frame);
                Ok(())
            }
            ClientMessage::Sync | ClientMessage::FunctionCall => {
                self.describes.push_back(VecDeque::new());
                if matches!(message, ClientMessage::Sync) {
                    self.added.on_client_sync(io);
                }
                io.send_upstream(frame);
                Ok(())
            }
            ClientMessage::Terminate | ClientMessage::Other => {
                if frame.tag() == client_tag::EXECUTE {
                    self.on_execute(frame);
                }
                io.send_upstream(frame);
                Ok(())
            }
        };
        self.batch_clean = clean_after;
        handled
    }

    async fn on_client_closed(&mut self, io: &mut SessionIo) -> Result<()> {
        self.commit_wrap_on_close(io).await
    }

    async fn on_server_message(&mut self, frame: Frame, io: &mut SessionIo) -> Result<()> {
        if self.added.hide(&frame, io) {
            return Ok(());
        }
        match frame.tag() {
            server_tag::NOTICE_RESPONSE => {
                if !self.answer_if_upcall(&frame, io).await {
                    io.send_client(&frame);
                }
            }
            server_tag::ERROR_RESPONSE => {
                let replaced = self.failures.replace(&frame);
                io.send_client(replaced.as_ref().unwrap_or(&frame));
            }
            server_tag::COMMAND_COMPLETE => {
                // `CLOSE CURSOR` and `CLOSE CURSOR ALL`.
                if !self.streams.is_empty() && frame.body().starts_with(b"CLOSE CURSOR") {
                    self.cursor_closed = true;
                }
                let renamed = self.rename_command_complete(&frame);
                io.send_client(renamed.as_ref().unwrap_or(&frame));
            }
            server_tag::PARAMETER_DESCRIPTION => {
                let described = self.on_parameter_description(&frame)?;
                io.send_client(described.as_ref().unwrap_or(&frame));
            }
            server_tag::READY_FOR_QUERY => {
                let ready = self.end_wrap(io, &frame).await?;
                if let Some((path, elapsed)) = io.state_mut().take_finished() {
                    self.shared.metrics.statement_latency(path, elapsed);
                }
                if io.state().upstream_idle() {
                    // Nothing in flight: no marker can still come back, and the upstream is
                    // free for the proxy's own clean-up.
                    self.failures.clear();
                    self.pending_tags.clear();
                }
                self.describes.pop_front();
                if self.describes.is_empty() {
                    self.describes.push_back(VecDeque::new());
                }
                self.forget_answers();
                self.end_streams_if_idle(io);
                self.end_streams_if_unread(io).await?;
                io.send_client(ready.as_ref().unwrap_or(&frame));
            }
            _ => io.send_client(&frame),
        }
        Ok(())
    }
}

impl InterceptHook {
    /// `drain`, then whether the upstream is idle for the proxy's own queries: not inside the
    /// client's extended-protocol batch (nor skipping the rest of it after an error), not in
    /// COPY, and in step with what it owes.
    async fn drain_to_idle(&mut self, io: &mut SessionIo) -> Result<bool> {
        self.drain(io).await?;
        Ok(io.state().upstream_idle())
    }

    /// Relays every response the client is still owed (answering upcalls on the way), so
    /// that the upstream is idle for private queries (see `drain_to_idle`).
    async fn drain(&mut self, io: &mut SessionIo) -> Result<()> {
        while io.state().pending_ready() > 0 {
            let frame = io.recv_upstream().await?;
            io.state_mut().on_server(&frame)?;
            self.on_server_message(frame, io).await?;
        }
        Ok(())
    }
}
