//! The service role and the shim installed with an administrator's connection, for
//! `pgml-proxy install --upstream <admin url>` and for the embedded Postgres at start. The
//! administrator (a superuser, or a managed Postgres' CREATEROLE admin) creates the
//! least-privilege role or reuses a clean one (a pre-planted one is refused), hands it the
//! shim's objects (only those a superuser owns: never another role's) and installs the shim
//! as that role. An install is planned with read-only checks, then run as one transaction;
//! `--dry-run` prints the same plan instead.

mod installer;
mod plan;
mod role;

pub use installer::{create_vector_hint, installer, Installer};
pub use plan::Plan;

use crate::intercept::shim::{self, pg_error};

/// What an administrator's install did.
#[derive(Debug)]
pub struct AdminInstall {
    /// The password generated for a newly created service role (shown once).
    pub generated_password: Option<String>,
    /// True when the shim was (re)installed, false when this version was already there.
    pub installed: bool,
    /// The schema extension vector lives in, when it is installed in the database.
    pub vector_schema: Option<String>,
    /// This install created extension vector.
    pub created_vector: bool,
}

/// Connects to `url` with search_path pinned (nothing resolves through a schema another
/// role can write to). The connection's task ends once the client is dropped.
pub async fn connect_pinned(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let (mut config, tls) =
        crate::net::upstream::postgres_config(url, crate::net::upstream::SslMode::Disable)
            .map_err(|e| e.to_string())?;
    config.options(shim::PINNED_OPTIONS);
    config.application_name("pgml-proxy install");
    let (client, connection) = config.connect(tls).await.map_err(|e| pg_error(&e))?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "install connection closed");
        }
    });
    Ok((client, task))
}

/// A random password: 32 hex digits from the kernel's generator.
pub fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        &mut bytes,
    )
    .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates the service role (or reuses a clean one, setting `password` when given), lets it
/// connect to this database, owns the shim to it and installs the shim as it, in one
/// transaction. For the embedded Postgres: pgvector is not required here.
pub async fn admin_install(
    client: &tokio_postgres::Client,
    password: Option<&str>,
) -> Result<AdminInstall, String> {
    install(client, password, false).await
}

/// `admin_install`; with `require_vector`, a database without extension vector is refused
/// (a superuser's install creates it in schema public).
pub async fn install(
    client: &tokio_postgres::Client,
    password: Option<&str>,
    require_vector: bool,
) -> Result<AdminInstall, String> {
    shim::in_install_transaction(
        client,
        async {
            plan::plan(client, password, require_vector)
                .await?
                .execute(client)
                .await
        },
        |_| true,
    )
    .await
}

/// The plan an install would run, from inside a transaction that is rolled back: nothing
/// changes.
pub async fn dry_run(
    client: &tokio_postgres::Client,
    password: Option<&str>,
    require_vector: bool,
) -> Result<Plan, String> {
    shim::in_install_transaction(client, plan::plan(client, password, require_vector), |_| {
        false
    })
    .await
}
