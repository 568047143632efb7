//! The upstream shim: the `pgml` schema (PostgresML's signatures) and `pgml_proxy` internals
//! installed into each upstream database, idempotently and versioned (sql/shim.sql), owned
//! by the service role; and the checks made before the service role trusts them.

use std::collections::HashSet;

use tokio::sync::Mutex;

use super::InterceptHook;
use crate::error::Result;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::session::io::SessionIo;

/// Version of sql/shim.sql; bump on every change to it.
pub const SHIM_VERSION: &str = "11";

/// The least-privilege role the proxy's service connection uses (created by `pgml-proxy
/// install` and by the embedded Postgres), owner of every shim object.
pub const SERVICE_ROLE: &str = "pgml_proxy_service";

/// Startup options of the connections `install` and `doctor` open: nothing they run resolves
/// a name through a schema another role can create objects in. (The service connection may go
/// through a transaction pooler, which refuses startup options: its statements name
/// everything schema-qualified, and its transactions pin search_path with SET LOCAL.)
pub const PINNED_OPTIONS: &str = "-c search_path=pg_catalog,pg_temp";

/// How long the shim waits for the proxy to take up an upcall before it concludes that the
/// session does not come through a proxy (see `upcall_call` in sql/shim.sql).
pub const CLAIM_SECONDS: u32 = 3;

const SHIM_SQL: &str = include_str!("../../sql/shim.sql");
/// PostgresML's catalog objects that its SDK (korvus) uses: pgml.projects, pgml.models and
/// their enums (sql/catalog.sql).
const CATALOG_SQL: &str = include_str!("../../sql/catalog.sql");

const INSTALL_LOCK: &str =
    "SET LOCAL search_path = pg_catalog, pg_temp; SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgml_proxy.install'))";

/// The shim's objects, without the transaction around them.
pub fn install_body() -> String {
    format!("{SHIM_SQL}\n{CATALOG_SQL}")
        .replace("@SHIM_VERSION@", SHIM_VERSION)
        .replace("@CLAIM_SECONDS@", &CLAIM_SECONDS.to_string())
}

/// SQL that opens the install transaction (and takes the install lock).
pub fn begin_install() -> String {
    format!("BEGIN; {INSTALL_LOCK}")
}

/// SQL that returns the installed shim version (NULL when absent).
/// (Read from the schema comment: it exists, or not, without any function call failing.)
pub const VERSION_QUERY: &str = "SELECT pg_catalog.substring(pg_catalog.obj_description(pg_catalog.to_regnamespace('pgml_proxy')::oid, 'pg_namespace'), 'shim version (\\S+)')";

/// One row per reason the current role must not trust the shim's objects in this database:
/// schema pgml or pgml_proxy, a function in them or a relation in pgml_proxy owned by
/// another role (tables in pgml are datasets, the loading role's own), or a trigger, rule, policy or row security on
/// a table of pgml_proxy (which would run another role's code, or filter, when the service
/// role writes). Empty when the objects are absent or all the current role's own.
/// Run with search_path pinned to pg_catalog, pg_temp (so the operators are pg_catalog's).
pub const PROBLEMS_QUERY: &str = "
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER),
ns AS (SELECT n.oid, n.nspname, n.nspowner FROM pg_catalog.pg_namespace n
        WHERE n.nspname OPERATOR(pg_catalog.=) ANY (ARRAY['pgml', 'pgml_proxy']::pg_catalog.name[])),
rel AS (SELECT c.oid, c.relkind, c.relowner, c.relrowsecurity FROM pg_catalog.pg_class c
          JOIN ns ON c.relnamespace OPERATOR(pg_catalog.=) ns.oid WHERE ns.nspname OPERATOR(pg_catalog.=) 'pgml_proxy')
SELECT pg_catalog.format('schema %I is owned by role %I', ns.nspname, pg_catalog.pg_get_userbyid(ns.nspowner))
  FROM ns WHERE ns.nspowner OPERATOR(pg_catalog.<>) (SELECT oid FROM me)
UNION ALL
SELECT pg_catalog.format('relation %s is owned by role %I', rel.oid::pg_catalog.regclass, pg_catalog.pg_get_userbyid(rel.relowner))
  FROM rel WHERE rel.relowner OPERATOR(pg_catalog.<>) (SELECT oid FROM me)
UNION ALL
SELECT pg_catalog.format('function %s is owned by role %I', p.oid::pg_catalog.regprocedure, pg_catalog.pg_get_userbyid(p.proowner))
  FROM pg_catalog.pg_proc p JOIN ns ON p.pronamespace OPERATOR(pg_catalog.=) ns.oid WHERE p.proowner OPERATOR(pg_catalog.<>) (SELECT oid FROM me)
UNION ALL
SELECT pg_catalog.format('table %s has trigger %I', t.tgrelid::pg_catalog.regclass, t.tgname)
  FROM pg_catalog.pg_trigger t JOIN rel ON t.tgrelid OPERATOR(pg_catalog.=) rel.oid
UNION ALL
SELECT pg_catalog.format('table %s has rule %I', w.ev_class::pg_catalog.regclass, w.rulename)
  FROM pg_catalog.pg_rewrite w JOIN rel ON w.ev_class OPERATOR(pg_catalog.=) rel.oid
 WHERE rel.relkind OPERATOR(pg_catalog.<>) 'v'
UNION ALL
SELECT pg_catalog.format('table %s has policy %I', y.polrelid::pg_catalog.regclass, y.polname)
  FROM pg_catalog.pg_policy y JOIN rel ON y.polrelid OPERATOR(pg_catalog.=) rel.oid
UNION ALL
SELECT pg_catalog.format('table %s has row level security enabled', rel.oid::pg_catalog.regclass)
  FROM rel WHERE rel.relrowsecurity";

/// Why the service role refuses a database: what it found, and what to do about it.
pub fn refusal(database: &str, role: &str, problems: &[String]) -> String {
    format!(
        "pgml-proxy refuses to use the pgml shim in database {database}: {}; its objects must belong to the role that installs them ({role}) and its tables carry no triggers, rules or policies, so pgml-proxy wrote nothing there. \
         Drop schemas pgml and pgml_proxy (as their owner) and run `pgml-proxy install --upstream postgres://ADMIN:PASSWORD@HOST:PORT/{database}`",
        problems.join("; ")
    )
}

/// The problems found by `PROBLEMS_QUERY` through `client`.
pub async fn problems(client: &tokio_postgres::Client) -> Result<Vec<String>, String> {
    Ok(client
        .query_typed(PROBLEMS_QUERY, &[])
        .await
        .map_err(|e| pg_error(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Installs the shim through `client` (the service connection, search_path pinned) unless
/// this version is already there, after checking that what is there is the current role's
/// own. Returns true when it installed.
pub async fn ensure_installed(
    client: &tokio_postgres::Client,
    database: &str,
    role: &str,
) -> Result<bool, String> {
    in_install_transaction(
        client,
        install_in_transaction(client, database, role),
        |installed| *installed,
    )
    .await
}

/// Runs `body` in the install transaction (serialised by the install lock): committed when
/// it succeeds and `commit` says so, rolled back otherwise.
pub async fn in_install_transaction<T>(
    client: &tokio_postgres::Client,
    body: impl std::future::Future<Output = Result<T, String>>,
    commit: impl FnOnce(&T) -> bool,
) -> Result<T, String> {
    client
        .batch_execute(&begin_install())
        .await
        .map_err(|e| pg_error(&e))?;
    let outcome = body.await;
    let end = if outcome.as_ref().is_ok_and(commit) {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client.batch_execute(end).await.map_err(|e| pg_error(&e));
    let value = outcome?;
    ended?;
    Ok(value)
}

/// The version check and install, inside the caller's transaction (locked); the current
/// role must own whatever is there already.
pub async fn install_in_transaction(
    client: &tokio_postgres::Client,
    database: &str,
    role: &str,
) -> Result<bool, String> {
    let found = problems(client).await?;
    if !found.is_empty() {
        return Err(refusal(database, role, &found));
    }
    let row = client
        .query_typed_one(VERSION_QUERY, &[])
        .await
        .map_err(|e| pg_error(&e))?;
    let installed: Option<String> = row.get(0);
    if installed.as_deref() == Some(SHIM_VERSION) {
        return Ok(false);
    }
    let body = format!(
        "SET LOCAL client_min_messages = warning;\n{}",
        install_body()
    );
    client.batch_execute(&body).await.map_err(|e| {
        let text = pg_error(&e);
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            format!(
                "{text}: the service role may not create the shim's schemas in database {database}. \
                 Run `pgml-proxy install --upstream postgres://ADMIN:PASSWORD@HOST:PORT/{database}` once \
                 (it creates the schemas owned by {SERVICE_ROLE}), or GRANT CREATE ON DATABASE {database} TO {role}"
            )
        } else {
            text
        }
    })?;
    Ok(true)
}

/// Removes the shim (DROP EXTENSION pgml): its functions in schema pgml and everything in
/// pgml_proxy (the empty schemas stay: the service role may not be allowed to create them
/// again; without the version comment the shim counts as absent), the service role's own
/// objects only, without CASCADE (an object of another role
/// that depends on them makes it fail, as DROP EXTENSION ... RESTRICT does). Tables in pgml
/// (datasets, the korvus catalog) are kept.
pub const UNINSTALL_BODY: &str = "
DO $$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname IN ('pgml', 'pgml_proxy')
                AND p.proowner = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;
DROP TABLE IF EXISTS pgml_proxy.upcall_answer;
COMMENT ON SCHEMA pgml_proxy IS NULL;
";

/// A tokio-postgres error with the server's message when there is one.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Most database names a set of `InstalledDatabases` remembers through `first`.
const MAX_REMEMBERED: usize = 1024;

/// Databases known to have the current shim, so the check runs once per database.
#[derive(Default)]
pub struct InstalledDatabases {
    done: Mutex<HashSet<String>>,
}

impl InstalledDatabases {
    /// True when `database` was already checked by this process.
    pub async fn contains(&self, database: &str) -> bool {
        self.done.lock().await.contains(database)
    }

    /// Forgets `database` (its shim was removed, or must be checked again).
    pub async fn forget(&self, database: &str) {
        self.done.lock().await.remove(database);
    }

    /// Records `database` as having the current shim.
    pub async fn insert(&self, database: &str) {
        self.done.lock().await.insert(database.to_string());
    }

    /// True the first time `database` is named (bounded: after `MAX_REMEMBERED` names it says
    /// false, so that clients naming databases cannot grow it).
    pub async fn first(&self, database: &str) -> bool {
        let mut done = self.done.lock().await;
        done.len() < MAX_REMEMBERED && done.insert(database.to_string())
    }
}

impl InterceptHook {
    /// Installs the shim through the service connection (when there is one), once per
    /// database; failures are logged and the statement goes on (Postgres reports what is missing).
    pub(super) async fn ensure_shim_via_service(&self) {
        let shared = &self.shared;
        if shared.config.service_url.is_none() || shared.installed.contains(&self.database).await {
            return;
        }
        let _turn = shared.install_turn.lock().await;
        // The check this one waited for may have done it.
        if shared.installed.contains(&self.database).await {
            return;
        }
        match shared.upcall.ensure_shim(&self.database).await {
            Ok(()) => shared.installed.insert(&self.database).await,
            Err(e) => {
                tracing::warn!(database = %self.database, error = %e, "could not install the pgml shim")
            }
        }
    }

    /// Makes sure this session's database has the current shim, once per proxy process: the
    /// service connection installs it when there is one. A client's session never installs it:
    /// the shim's objects would belong to that client's role, which could then change what
    /// every other role's `pgml.embed` runs. Without a service connection (or when it may
    /// not), the session only reads the version: statements the proxy plans need only the
    /// current shim, not the service role, and a missing one is logged with what to run.
    pub(super) async fn ensure_shim(&mut self, io: &mut SessionIo) -> Result<()> {
        let shared = self.shared.clone();
        if shared.installed.contains(&self.database).await {
            return Ok(());
        }
        if shared.config.service_url.is_some() {
            self.ensure_shim_via_service().await;
            if shared.installed.contains(&self.database).await {
                return Ok(());
            }
        }
        if io.state().transaction_status() == TransactionStatus::Failed {
            return Ok(());
        }
        let current = self.private(io, VERSION_QUERY).await?;
        let installed = current
            .rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v.as_ref() == SHIM_VERSION.as_bytes());
        if installed {
            shared.installed.insert(&self.database).await;
        } else if shared.missing_warned.first(&self.database).await {
            tracing::warn!(
                database = %self.database,
                "the pgml shim (version {SHIM_VERSION}) is not installed in this database and pgml-proxy has no \
                 service connection to install it: statements that read pgml.embed's arguments from tables fail. \
                 Run `pgml-proxy install --upstream postgres://ADMIN:PASSWORD@HOST:PORT/{}` once, or give --service-url",
                self.database
            );
        }
        Ok(())
    }
}
