//! The upcall path: the shim's private NOTICEs, and the side connections that answer them.
//! A NOTICE whose message starts with the marker is removed from the client's stream; its
//! request is embedded by the engine and the answer is committed through a service connection,
//! which runs as the least-privilege service role with search_path pinned, and writes only
//! after checking that the shim's objects are its own (no triggers, rules or policies).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgml_engine::{Embedder, Ranker};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_postgres::types::Type;

use super::shim::{self, pg_error};
use super::InterceptHook;
use crate::app::metrics::Path;
use crate::error::ProxyError;
use crate::net::frame::Frame;
use crate::net::messages::error_response::{self, Fields};
use crate::net::messages::server_tag;
use crate::net::upstream::{postgres_config, SslMode};
use crate::session::io::SessionIo;

/// Answers older than this are removed by the clean-up (the waiting session deletes its own
/// as it reads them; these are the abandoned ones).
const ABANDONED_AFTER: &str = "5 minutes";

/// The CancelRequest code (1234 << 16 | 5678).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Message prefix of the shim's upcall NOTICE (see sql/shim.sql).
pub const MARKER: &str = "pgml-proxy:upcall:";

/// What an upcall asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum UpcallFunction {
    /// pgml.embed: one vector per input.
    Embed,
    /// pgml.chunk: the chunks of the one input (`model` is the splitter).
    Chunk,
    /// pgml.rank: the inputs (documents) ranked against `query` by a cross-encoder.
    Rank {
        /// The query the documents are ranked against.
        query: String,
    },
}

/// One upcall request, decoded from the NOTICE's message and detail.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcallRequest {
    /// The request id (a uuid chosen by the shim).
    pub id: String,
    /// What to compute.
    pub function: UpcallFunction,
    /// Model name (the splitter for pgml.chunk) as the SQL gave it.
    pub model: String,
    /// Texts to embed, chunk or rank, in order.
    pub inputs: Vec<String>,
    /// kwargs object.
    pub kwargs: serde_json::Value,
}

#[derive(Deserialize)]
struct Detail {
    /// Absent in the NOTICEs of shim versions before 6 (pgml.embed only).
    #[serde(default)]
    function: Option<String>,
    model: String,
    inputs: Vec<String>,
    kwargs: serde_json::Value,
    #[serde(default)]
    query: Option<String>,
}

impl UpcallRequest {
    /// Decodes a NOTICE's message and detail; None when it is not an upcall (or malformed).
    pub fn from_notice(message: &str, detail: Option<&str>) -> Option<Self> {
        let id = message.strip_prefix(MARKER)?;
        if id.len() != 36 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return None;
        }
        let detail: Detail = serde_json::from_str(detail?).ok()?;
        let function = match (detail.function.as_deref(), detail.query) {
            (None | Some("embed"), _) => UpcallFunction::Embed,
            (Some("chunk"), _) if detail.inputs.len() == 1 => UpcallFunction::Chunk,
            (Some("rank"), Some(query)) => UpcallFunction::Rank { query },
            _ => return None,
        };
        Some(Self {
            id: id.to_string(),
            function,
            model: detail.model,
            inputs: detail.inputs,
            kwargs: detail.kwargs,
        })
    }
}

/// A computed upcall answer, as the columns of its rows (ord 1..): embeddings (as `real[]`
/// text) for pgml.embed, chunks for pgml.chunk, (corpus_id, score) best first for pgml.rank.
#[derive(Default)]
struct Answer {
    embeddings: Vec<String>,
    chunks: Vec<String>,
    corpus_ids: Vec<i64>,
    scores: Vec<f64>,
}

/// Why an upcall got no answer.
#[derive(Debug)]
pub enum AnswerError {
    /// The shim's objects in that database are not the service role's own (or carry
    /// triggers, rules or policies): nothing was written.
    Refused(String),
    /// The answer could not be written (no service connection, a failed INSERT).
    Failed(String),
}

/// Answers upcalls through one service connection per database (opened on first use).
pub struct UpcallService {
    sslmode: SslMode,
    service_url: Option<String>,
    engine: Arc<dyn Embedder>,
    ranker: Arc<dyn Ranker>,
    connections: Mutex<HashMap<String, Arc<tokio_postgres::Client>>>,
    timeout: Duration,
}

impl UpcallService {
    /// `service_url`: credentials for the side connections (database replaced per request).
    pub fn new(
        service_url: Option<String>,
        sslmode: SslMode,
        engine: Arc<dyn Embedder>,
        ranker: Arc<dyn Ranker>,
        timeout: Duration,
    ) -> Self {
        Self {
            service_url,
            sslmode,
            engine,
            ranker,
            connections: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// The role the service connections log in as.
    pub fn role(&self) -> String {
        self.service_url
            .as_deref()
            .and_then(|url| url.parse::<tokio_postgres::Config>().ok())
            .and_then(|c| c.get_user().map(str::to_owned))
            .unwrap_or_else(|| shim::SERVICE_ROLE.to_owned())
    }

    /// The shared service connection to `database` (opened on first use).
    async fn connection(&self, database: &str) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut connections = self.connections.lock().await;
        if let Some(client) = connections.get(database) {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let client = Arc::new(self.open(database).await?);
        connections.insert(database.to_string(), client.clone());
        Ok(client)
    }

    /// A new service connection to `database`, search_path pinned.
    async fn open(&self, database: &str) -> Result<tokio_postgres::Client, String> {
        let Some(url) = &self.service_url else {
            return Err("pgml-proxy has no --service-url, so it cannot answer pgml.embed calls made inside functions, DO blocks or triggers".into());
        };
        // The same TLS settings as relayed sessions (--upstream-sslmode, or the URL's own).
        let (mut config, tls) = postgres_config(url, self.sslmode)
            .map_err(|e| format!("invalid --service-url: {e}"))?;
        config.dbname(database);
        config.application_name("pgml-proxy upcall service");
        // No startup options (a transaction pooler refuses them) and no named statements (a
        // pooler's next transaction may run on another backend, where they do not exist or
        // collide): every statement here is unnamed (`query_typed`), names everything
        // schema-qualified, and transactions pin search_path with SET LOCAL.
        let (client, connection) = config.connect(tls).await.map_err(|e| {
            format!("pgml-proxy could not open its service connection to database {database}: {e}")
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "upcall service connection closed");
            }
        });
        let superuser = client
            .query_typed_one(
                "SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if superuser {
            tracing::warn!(%database, "the service connection runs as a superuser; give --service-url a least-privilege role (pgml-proxy install creates {})", shim::SERVICE_ROLE);
        }
        Ok(client)
    }

    /// Computes the request's embeddings and commits the answer (or the error) for the shim.
    /// Returns an error only when no answer could be written at all. Nothing is written when
    /// the shim's objects there are not the service role's own: the check runs before every
    /// write (one catalog query, small next to an inference), so a trigger added later by a
    /// superuser is caught too. Objects the service role owns cannot gain triggers, rules or
    /// policies from anyone else, so no other role's code can run between check and write.
    pub async fn answer(&self, database: &str, request: UpcallRequest) -> Result<(), AnswerError> {
        let client = self
            .connection(database)
            .await
            .map_err(AnswerError::Failed)?;
        // The checks, then the claim (the shim's sign that a proxy took the request up), run
        // while the engine computes: their round trips cost the waiting statement nothing.
        let id = request.id.as_str();
        let check_and_claim = async {
            let found = shim::problems(&client).await.map_err(|e| {
                AnswerError::Failed(format!(
                    "checking the pgml shim in database {database}: {e}"
                ))
            })?;
            if !found.is_empty() {
                return Err(AnswerError::Refused(shim::refusal(
                    database,
                    &self.role(),
                    &found,
                )));
            }
            self.claim(&client, id).await.map_err(|e| {
                AnswerError::Failed(format!(
                    "pgml-proxy could not take up the upcall: {}",
                    pg_error(&e)
                ))
            })
        };
        let (claimed, outcome) = tokio::join!(
            check_and_claim,
            tokio::time::timeout(self.timeout, self.compute(&request))
        );
        claimed?;
        let written = match outcome {
            Ok(Ok(answer)) => {
                // One row per value, ord from 1; each function fills its own columns (unnest
                // pads the others with NULL).
                client
                    .execute_typed(
                        "INSERT INTO pgml_proxy.upcall_answer (request_id, ord, embedding, chunk, corpus_id, score) \
                         SELECT $1::pg_catalog.text::pg_catalog.uuid, t.n::pg_catalog.int4, t.e::pg_catalog.float4[], t.c, t.i, t.s \
                           FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5)) \
                                WITH ORDINALITY AS t(e, c, i, s, n)",
                        &[
                            (&id, Type::TEXT),
                            (&answer.embeddings, Type::TEXT_ARRAY),
                            (&answer.chunks, Type::TEXT_ARRAY),
                            (&answer.corpus_ids, Type::INT8_ARRAY),
                            (&answer.scores, Type::FLOAT8_ARRAY),
                        ],
                    )
                    .await
            }
            Ok(Err(e)) => self.write_error(&client, id, &e).await,
            Err(_) => {
                self.write_error(&client, id, &ProxyError::Timeout(self.timeout))
                    .await
            }
        };
        written.map(|_| ()).map_err(|e| {
            AnswerError::Failed(format!(
                "pgml-proxy could not write the upcall answer: {}",
                pg_error(&e)
            ))
        })
    }

    /// Computes what the request asks for.
    async fn compute(&self, request: &UpcallRequest) -> Result<Answer, ProxyError> {
        match &request.function {
            UpcallFunction::Embed => {
                let vectors = self
                    .engine
                    .embed(&request.model, request.inputs.clone(), &request.kwargs)
                    .await?;
                Ok(Answer {
                    embeddings: vectors
                        .iter()
                        .map(|v| pgml_rewriter::format_real_array(v))
                        .collect(),
                    ..Answer::default()
                })
            }
            UpcallFunction::Chunk => {
                let text = request.inputs.first().cloned().unwrap_or_default();
                let (splitter, kwargs) = (request.model.clone(), request.kwargs.clone());
                let chunks = tokio::task::spawn_blocking(move || {
                    pgml_chunk::chunk(&splitter, &text, &kwargs)
                })
                .await
                .map_err(|e| ProxyError::Internal(format!("pgml.chunk task failed: {e}")))??;
                Ok(Answer {
                    chunks,
                    ..Answer::default()
                })
            }
            UpcallFunction::Rank { query } => {
                let ranked = self
                    .ranker
                    .rank(
                        &request.model,
                        query,
                        request.inputs.clone(),
                        &request.kwargs,
                    )
                    .await?;
                Ok(Answer {
                    corpus_ids: ranked.iter().map(|r| r.corpus_id as i64).collect(),
                    scores: ranked.iter().map(|r| r.score).collect(),
                    ..Answer::default()
                })
            }
        }
    }

    /// Writes the answer that fails the waiting call with `error` (its SQLSTATE and text).
    async fn write_error(
        &self,
        client: &tokio_postgres::Client,
        id: &str,
        error: &ProxyError,
    ) -> Result<u64, tokio_postgres::Error> {
        client
            .execute_typed(
                "INSERT INTO pgml_proxy.upcall_answer (request_id, ord, error_sqlstate, error_message) \
                 VALUES ($1::pg_catalog.text::pg_catalog.uuid, 0, $2, $3)",
                &[
                    (&id, Type::TEXT),
                    (&error.sqlstate(), Type::TEXT),
                    (&error.to_string(), Type::TEXT),
                ],
            )
            .await
    }

    /// Tells the shim that the proxy has taken up request `id` (ord -1), and how long to wait
    /// for the answer: the proxy's own timeout, and a margin for writing the answer.
    async fn claim(
        &self,
        client: &tokio_postgres::Client,
        id: &str,
    ) -> Result<u64, tokio_postgres::Error> {
        let wait_ms =
            i32::try_from(self.timeout.as_millis().saturating_add(5_000)).unwrap_or(i32::MAX);
        client
            .execute_typed(
                "INSERT INTO pgml_proxy.upcall_answer (request_id, ord, wait_ms) \
                 VALUES ($1::pg_catalog.text::pg_catalog.uuid, -1, $2) ON CONFLICT DO NOTHING",
                &[(&id, Type::TEXT), (&wait_ms, Type::INT4)],
            )
            .await
    }

    /// Installs (or upgrades) the shim in `database` through the service connection.
    pub async fn ensure_shim(&self, database: &str) -> Result<(), String> {
        // A connection of its own: the install is a transaction of several round trips,
        // which answers written on the shared connection meanwhile must not join.
        let client = self.open(database).await?;
        shim::ensure_installed(&client, database, &self.role())
            .await
            .map(|_| ())
            .map_err(|e| format!("installing the pgml shim in database {database}: {e}"))
    }

    /// The shim version installed in `database` (None when there is none), read through the
    /// service connection.
    pub async fn shim_version(&self, database: &str) -> Result<Option<String>, String> {
        let client = self.connection(database).await?;
        let row = client
            .query_typed_one(shim::VERSION_QUERY, &[])
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(row.get(0))
    }

    /// Removes the shim from `database` (DROP EXTENSION pgml), in one transaction under the
    /// install lock, after the same ownership checks as every write.
    pub async fn uninstall_shim(&self, database: &str) -> Result<(), String> {
        let client = self.open(database).await?;
        let found = shim::problems(&client).await?;
        if !found.is_empty() {
            return Err(shim::refusal(database, &self.role(), &found));
        }
        let script = format!(
            "{};\n{}\nCOMMIT;",
            shim::begin_install(),
            shim::UNINSTALL_BODY
        );
        if let Err(e) = client.batch_execute(&script).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(pg_error(&e));
        }
        Ok(())
    }

    /// Removes answers the session no longer needs (its statement has ended), and abandoned
    /// ones. Rows locked by a session that took them in a still-open transaction are skipped,
    /// so the shared service connection never waits on a client's transaction.
    pub async fn forget(&self, database: &str, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        if let Ok(client) = self.connection(database).await {
            let sql = format!(
                "DELETE FROM pgml_proxy.upcall_answer WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY( \
                   SELECT a.ctid FROM pgml_proxy.upcall_answer a \
                    WHERE a.request_id::pg_catalog.text OPERATOR(pg_catalog.=) ANY($1) \
                       OR a.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) '{ABANDONED_AFTER}'::pg_catalog.interval) \
                      FOR UPDATE SKIP LOCKED))"
            );
            if shim::problems(&client).await.is_ok_and(|p| p.is_empty()) {
                let _ = client
                    .execute_typed(&sql, &[(&ids, Type::TEXT_ARRAY)])
                    .await;
            }
        }
    }
}

impl InterceptHook {
    /// Answers the shim's upcall NOTICE (its text in the session's client encoding).
    /// False when the NOTICE is not one (the caller decides whether the client sees it).
    /// When no answer can be written, the client gets a WARNING that says why at once (a
    /// NOTICE may arrive mid-statement; an error may not), and the statement waiting for the
    /// answer is cancelled rather than left to time out.
    pub(super) async fn answer_if_upcall(&mut self, frame: &Frame, io: &mut SessionIo) -> bool {
        let fields = Fields::decode_in(frame, io.state().client_encoding());
        let Some(message) = fields.message().filter(|m| m.starts_with(MARKER)) else {
            return false;
        };
        let Some(request) = UpcallRequest::from_notice(message, fields.get(b'D')) else {
            tracing::warn!("malformed upcall notice dropped");
            return true;
        };
        io.state_mut().clock_mut().note_running(Path::Upcall);
        let started = Instant::now();
        let id = request.id.clone();
        let answered = self.shared.upcall.answer(&self.database, request).await;
        self.shared.metrics.upcall(started.elapsed());
        let why = match answered {
            Ok(()) => {
                self.answered.push(id);
                return true;
            }
            Err(AnswerError::Failed(e)) => {
                tracing::warn!(error = %e, "could not answer an upcall");
                ProxyError::Service(e)
            }
            Err(AnswerError::Refused(e)) => {
                tracing::warn!(database = %self.database, error = %e, "refused to answer an upcall");
                ProxyError::AnswerRefused(e)
            }
        };
        let warning = error_response::of_error("WARNING", &why);
        io.send_client(&Frame::new(server_tag::NOTICE_RESPONSE, warning.body()));
        self.cancel_waiting(io, Arc::new(why));
        true
    }

    /// Ends the statement waiting for an answer that will not come, with a CancelRequest for
    /// the session's upstream process; its 57014 is then replaced by `why`.
    fn cancel_waiting(&mut self, io: &SessionIo, why: Arc<ProxyError>) {
        let (Some(key), Some(upstream)) = (
            io.state().backend_key(),
            self.shared.config.cancel_via.clone(),
        ) else {
            return;
        };
        let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        body.extend_from_slice(key);
        self.failures.cancelling(why);
        tokio::spawn(async move {
            if let Err(e) = upstream.cancel(&body).await {
                tracing::warn!(error = %e, "could not cancel a statement waiting for an upcall");
            }
        });
    }

    /// Deletes the answers of the statement that just ended (in the background).
    pub(super) fn forget_answers(&mut self) {
        if self.answered.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.answered);
        let shared = self.shared.clone();
        let database = self.database.clone();
        tokio::spawn(async move { shared.upcall.forget(&database, ids).await });
    }
}
