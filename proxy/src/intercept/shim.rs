//! The upstream shim: the `pgml` schema (PostgresML's signatures) and `pgml_proxy` internals
//! installed into each upstream database, idempotently and versioned (sql/shim.sql).

use std::collections::HashSet;

use tokio::sync::Mutex;

use super::InterceptHook;
use crate::error::Result;
use crate::net::messages::error_response::Fields;
use crate::net::messages::ready_for_query::TransactionStatus;
use crate::session::io::SessionIo;

/// Version of sql/shim.sql; bump on every change to it.
pub const SHIM_VERSION: &str = "3";

const SHIM_SQL: &str = include_str!("../../sql/shim.sql");

/// The full install script for this version (one transaction, serialised by an advisory lock).
pub fn install_script() -> String {
    format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('pgml_proxy.install'));\nSET LOCAL client_min_messages = warning;\n{}\nCOMMIT;\n",
        SHIM_SQL.replace("@SHIM_VERSION@", SHIM_VERSION)
    )
}

/// SQL that returns the installed shim version (NULL when absent).
/// (Read from the schema comment: it exists, or not, without any function call failing.)
pub const VERSION_QUERY: &str = "SELECT substring(obj_description(to_regnamespace('pgml_proxy')::oid, 'pg_namespace') FROM 'shim version (\\S+)')";

/// Installs the shim through `client` unless this version is already there. Returns true
/// when it installed.
pub async fn ensure_installed(client: &tokio_postgres::Client) -> Result<bool, String> {
    let row = client
        .query_one(VERSION_QUERY, &[])
        .await
        .map_err(|e| pg_error(&e))?;
    let installed: Option<String> = row.get(0);
    if installed.as_deref() == Some(SHIM_VERSION) {
        return Ok(false);
    }
    client
        .batch_execute(&install_script())
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(true)
}

/// A tokio-postgres error with the server's message when there is one.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

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

    /// Records `database` as having the current shim.
    pub async fn insert(&self, database: &str) {
        self.done.lock().await.insert(database.to_string());
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
        match shared.upcall.ensure_shim(&self.database).await {
            Ok(()) => shared.installed.insert(&self.database).await,
            Err(e) => {
                tracing::warn!(database = %self.database, error = %e, "could not install the pgml shim")
            }
        }
    }

    /// Installs the shim in this session's database once per proxy process: through the
    /// service connection when there is one, else on the session itself when it is idle.
    pub(super) async fn ensure_shim(&mut self, io: &mut SessionIo) -> Result<()> {
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
        let current = self.private(io, VERSION_QUERY).await?;
        let installed = current
            .rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .is_some_and(|v| v.as_ref() == SHIM_VERSION.as_bytes());
        if !installed {
            let result = self.private(io, &install_script()).await?;
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
}
