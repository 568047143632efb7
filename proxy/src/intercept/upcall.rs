//! The upcall path: the shim's private NOTICEs, and the side connections that answer them.
//! A NOTICE the shim raised (`request`: its marker, and its context naming the shim's function)
//! is removed from the client's stream; its request is computed by the engine (embeddings,
//! chunks, a ranking, or text generation by a routed model server: `transform`) and the answer is
//! committed through a service connection (`pool`: one per database, bounded), which runs as
//! the least-privilege service role with search_path pinned, and writes only after checking
//! that the shim's objects are its own (no triggers, rules or policies).

mod chunks;
mod compute;
mod hook;
mod pool;
mod request;
mod stream;
mod transform;

use std::sync::Arc;
use std::time::Duration;

use pgml_engine::{Embedder, Generator, Ranker};
use tokio_postgres::types::Type;

use super::shim::{self, pg_error};
use crate::error::ProxyError;
use crate::net::upstream::{postgres_config, SslMode};
use compute::Answer;
use pool::{Counted, Lease, PoolError, ServiceConnections};
pub use request::{
    flushed_by_shim, raised_by_shim, raising_function, UpcallFunction, UpcallRequest, FLUSH_MARKER,
    MARKER,
};

/// Answers older than this are removed by the clean-up (the waiting session deletes its own
/// as it reads them; these are the abandoned ones).
const ABANDONED_AFTER: &str = "5 minutes";

/// A service connection unused this long is closed.
const IDLE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// The CancelRequest code (1234 << 16 | 5678).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Why an upcall got no answer.
#[derive(Debug)]
pub enum AnswerError {
    /// The shim's objects in that database are not the service role's own (or carry
    /// triggers, rules or policies): nothing was written.
    Refused(String),
    /// The answer could not be written (no service connection, a failed INSERT).
    Failed(String),
    /// `--service-connections-max` service connections are open: none for this database.
    TooManyConnections(String),
}

impl From<PoolError> for AnswerError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Full { .. } => AnswerError::TooManyConnections(e.to_string()),
            PoolError::Open(e) => AnswerError::Failed(e),
        }
    }
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Full { max } => write!(
                f,
                "pgml-proxy has {max} service connections open, its bound (--service-connections-max {max}): \
                 none is left for this database until one is idle for {} minutes",
                IDLE_EXPIRY.as_secs() / 60
            ),
            PoolError::Open(e) => f.write_str(e),
        }
    }
}

/// Answers upcalls through one service connection per database (opened on first use).
pub struct UpcallService {
    sslmode: SslMode,
    service_url: Option<String>,
    engine: Arc<dyn Embedder>,
    ranker: Arc<dyn Ranker>,
    /// pgml.transform's model servers (`--remote-model` routes).
    generator: Arc<Generator>,
    connections: ServiceConnections,
    timeout: Duration,
    /// pgml.transform_stream writers running, by request id: true once the session that
    /// reads the stream ended the transaction reading it (see `stream::Streams`).
    streams: stream::Streams,
}

impl UpcallService {
    /// `service_url`: credentials for the side connections (database replaced per request);
    /// at most `max_connections` of them at a time.
    pub fn new(
        service_url: Option<String>,
        sslmode: SslMode,
        engine: Arc<dyn Embedder>,
        ranker: Arc<dyn Ranker>,
        generator: Arc<Generator>,
        timeout: Duration,
        max_connections: usize,
    ) -> Self {
        Self {
            service_url,
            sslmode,
            engine,
            ranker,
            generator,
            connections: ServiceConnections::new(max_connections, IDLE_EXPIRY),
            timeout,
            streams: stream::Streams::default(),
        }
    }

    /// The session that started the streams `ids` has ended the transaction that read them
    /// (no cursor of it is left): their writers stop, and with them the servers' streams.
    pub fn abandon_streams(&self, ids: &[String]) {
        self.streams.abandon(ids);
    }

    /// Answers the distinct pgml.transform requests a statement's prefetch read (`keys`:
    /// `pgml_proxy.transform_key` texts) all at once; the generator bounds the requests in
    /// flight per server (the others wait their turn, so the upcall timeout, which would count
    /// that wait, does not apply: `--generate-timeout` bounds each wait for the server). A key
    /// that is not a request is left out (the statement's pgml.transform serves it). The
    /// answers kept are at most `max_bytes` (keys and JSON texts): past it the requests still
    /// running are dropped, which stops them, and their rows are left to the upcall.
    pub async fn transform_prefetched(
        &self,
        keys: Vec<String>,
        max_bytes: usize,
    ) -> Vec<(String, Result<serde_json::Value, ProxyError>)> {
        let calls = keys.into_iter().filter_map(|key| {
            let request = transform::prefetched_request(&key)?;
            Some(async move {
                let result = transform::answer(&self.generator, &request).await;
                (key, result)
            })
        });
        transform::collect_within(calls, max_bytes).await
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
    async fn connection(&self, database: &str) -> Result<Lease, PoolError> {
        self.connections
            .shared(database, || self.open(database))
            .await
    }

    /// A service connection of its own to `database` (counted against the bound).
    async fn own_connection(&self, database: &str) -> Result<Counted, String> {
        self.connections
            .own(|| self.open(database))
            .await
            .map_err(|e| e.to_string())
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
        if request.streamed {
            return self.answer_stream(database, request).await;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let client = self.connection(database).await?;
        // The checks, then the claim (the shim's sign that a proxy took the request up), run
        // while the engine computes: their round trips cost the waiting statement nothing.
        let id = request.id.as_str();
        let check_and_claim = self.check_and_claim(&client, database, id);
        let (claimed, outcome) = tokio::join!(
            check_and_claim,
            tokio::time::timeout(self.timeout, self.compute(&request))
        );
        claimed?;
        let written = match outcome {
            // Written while they are made, in bounded batches (see `chunks`).
            Ok(Ok(Answer::Chunks(chunks))) => {
                self.write_chunks(&client, id, chunks, deadline).await
            }
            Ok(Ok(Answer::Texts(texts))) if texts.is_empty() => self.write_empty(&client, id).await,
            Ok(Ok(Answer::Texts(texts))) => chunks::insert(&client, id, 1, &texts).await,
            Ok(Ok(Answer::Rows(answer)))
                if answer.embeddings.is_empty() && answer.corpus_ids.is_empty() =>
            {
                self.write_empty(&client, id).await
            }
            Ok(Ok(Answer::Rows(answer))) => {
                // One row per value, ord from 1; each function fills its own columns (unnest
                // pads the others with NULL).
                client
                    .execute_typed(
                        "INSERT INTO pgml_proxy.upcall_answer (request_id, ord, embedding, corpus_id, score) \
                         SELECT $1::pg_catalog.text::pg_catalog.uuid, t.n::pg_catalog.int4, t.e::pg_catalog.float4[], t.i, t.s \
                           FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4)) \
                                WITH ORDINALITY AS t(e, i, s, n)",
                        &[
                            (&id, Type::TEXT),
                            (&answer.embeddings, Type::TEXT_ARRAY),
                            (&answer.corpus_ids, Type::INT8_ARRAY),
                            (&answer.scores, Type::FLOAT8_ARRAY),
                        ],
                    )
                    .await
            }
            Ok(Err(e)) => self.write_error(&client, id, &e).await,
            Err(_) => {
                let error = match request.function {
                    UpcallFunction::Transform { stream } => {
                        transform::timed_out(stream, self.timeout)
                    }
                    _ => ProxyError::Timeout(self.timeout),
                };
                self.write_error(&client, id, &error).await
            }
        };
        written.map(|_| ()).map_err(|e| {
            AnswerError::Failed(format!(
                "pgml-proxy could not write the upcall answer: {}",
                pg_error(&e)
            ))
        })
    }

    /// Checks the shim's objects in `database` (see `answer`), then claims request `id`.
    async fn check_and_claim(
        &self,
        client: &tokio_postgres::Client,
        database: &str,
        id: &str,
    ) -> Result<(), AnswerError> {
        let found = shim::problems(client).await.map_err(|e| {
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
        self.claim(client, id).await.map(|_| ()).map_err(|e| {
            AnswerError::Failed(format!(
                "pgml-proxy could not take up the upcall: {}",
                pg_error(&e)
            ))
        })
    }

    /// Answers request `id` with no rows (pgml.chunk of a text with no chunks, pgml.rank of no
    /// documents): its claim's wait becomes 0, which the shim's `answer_state` reads as "the
    /// answer is committed" (shims since version 8), so the call returns an empty set at once
    /// instead of waiting for rows that never come.
    async fn write_empty(
        &self,
        client: &tokio_postgres::Client,
        id: &str,
    ) -> Result<u64, tokio_postgres::Error> {
        client
            .execute_typed(
                "UPDATE pgml_proxy.upcall_answer SET wait_ms = 0 \
                  WHERE request_id OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.uuid \
                    AND ord OPERATOR(pg_catalog.=) -1",
                &[(&id, Type::TEXT)],
            )
            .await
    }

    /// Writes the answer that fails the waiting call with `error` (see `write_error`).
    async fn write_error(
        &self,
        client: &tokio_postgres::Client,
        id: &str,
        error: &ProxyError,
    ) -> Result<u64, tokio_postgres::Error> {
        write_error(client, id, error).await
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
        let client = self.own_connection(database).await?;
        shim::ensure_installed(&client, database, &self.role())
            .await
            .map(|_| ())
            .map_err(|e| format!("installing the pgml shim in database {database}: {e}"))
    }

    /// The shim version installed in `database` (None when there is none), read through the
    /// service connection.
    pub async fn shim_version(&self, database: &str) -> Result<Option<String>, String> {
        let client = self.connection(database).await.map_err(|e| e.to_string())?;
        let row = client
            .query_typed_one(shim::VERSION_QUERY, &[])
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(row.get(0))
    }

    /// Removes the shim from `database` (DROP EXTENSION pgml), in one transaction under the
    /// install lock, after the same ownership checks as every write.
    pub async fn uninstall_shim(&self, database: &str) -> Result<(), String> {
        let client = self.own_connection(database).await?;
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

/// Writes the answer row (ord 0) that fails the waiting call, or a stream's reader, with
/// `error` (its SQLSTATE and text).
async fn write_error(
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
