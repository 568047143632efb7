//! The service role and the shim installed with an administrator's connection, for
//! `pgml-proxy install --upstream <admin url>` and for the embedded Postgres at start. The
//! administrator creates the least-privilege role, hands it the shim's objects (only those a
//! superuser owns: never another role's), and installs the shim as that role.

use crate::intercept::shim::{self, pg_error, SERVICE_ROLE};

/// What an administrator's install did.
#[derive(Debug)]
pub struct AdminInstall {
    /// The password generated for a newly created service role (shown once).
    pub generated_password: Option<String>,
    /// True when the shim was (re)installed, false when this version was already there.
    pub installed: bool,
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

/// Creates the service role (or brings an existing one back to least privilege, and sets
/// `password` when given), lets it connect to this database and owns the shim to it.
pub async fn admin_install(
    client: &tokio_postgres::Client,
    password: Option<&str>,
) -> Result<AdminInstall, String> {
    let database: String = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    let generated_password = ensure_role(client, password).await?;
    let grant: String = client
        .query_one(
            "SELECT pg_catalog.format('GRANT CONNECT ON DATABASE %I TO %I', $1::text, $2::text)",
            &[&database, &SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    client
        .batch_execute(&grant)
        .await
        .map_err(|e| pg_error(&e))?;
    let installed =
        shim::in_install_transaction(client, hand_over_and_install(client, &database), |_| true)
            .await?;
    Ok(AdminInstall {
        generated_password,
        installed,
    })
}

async fn ensure_role(
    client: &tokio_postgres::Client,
    password: Option<&str>,
) -> Result<Option<String>, String> {
    let existing = client
        .query_opt(
            "SELECT r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls OR NOT r.rolcanlogin \
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    let (verb, generated) = match existing {
        None => match password {
            Some(_) => ("CREATE", None),
            None => ("CREATE", Some(random_password()?)),
        },
        Some(row) if row.get::<_, bool>(0) || password.is_some() => ("ALTER", None),
        Some(_) => return Ok(None),
    };
    let password = password.map(str::to_owned).or_else(|| generated.clone());
    let statement: String = client
        .query_one(
            "SELECT pg_catalog.format('%s ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', $1::text, $2::text) \
                    || coalesce(pg_catalog.format(' PASSWORD %L', $3::text), '')",
            &[&verb, &SERVICE_ROLE, &password],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    client
        .batch_execute(&statement)
        .await
        .map_err(|e| format!("{verb} ROLE {SERVICE_ROLE}: {}", pg_error(&e)))?;
    Ok(generated)
}

/// Inside the install transaction: superuser-owned shim objects (installs before version 4)
/// go to the service role, missing schemas are created owned by it, and the shim is
/// installed as it (after the same checks the service connection makes).
async fn hand_over_and_install(
    client: &tokio_postgres::Client,
    database: &str,
) -> Result<bool, String> {
    let statements: Vec<String> = client
        .query(
            "SELECT pg_catalog.format('ALTER SCHEMA %I OWNER TO %I', n.nspname, $1::text)
               FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles o ON o.oid = n.nspowner
              WHERE n.nspname IN ('pgml', 'pgml_proxy') AND o.rolsuper
             UNION ALL
             SELECT pg_catalog.format('ALTER TABLE %s OWNER TO %I', c.oid::pg_catalog.regclass, $1::text)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
              WHERE n.nspname = 'pgml_proxy' AND o.rolsuper AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
             UNION ALL
             SELECT pg_catalog.format('ALTER ROUTINE %s OWNER TO %I', p.oid::pg_catalog.regprocedure, $1::text)
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
              WHERE n.nspname IN ('pgml', 'pgml_proxy') AND o.rolsuper
             UNION ALL
             SELECT pg_catalog.format('CREATE SCHEMA %I AUTHORIZATION %I', s.name, $1::text)
               FROM pg_catalog.unnest(ARRAY['pgml', 'pgml_proxy']) AS s(name)
              WHERE pg_catalog.to_regnamespace(s.name) IS NULL",
            &[&SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for statement in &statements {
        client
            .batch_execute(statement)
            .await
            .map_err(|e| format!("{statement}: {}", pg_error(&e)))?;
    }
    client
        .batch_execute(&format!("SET LOCAL ROLE {SERVICE_ROLE}"))
        .await
        .map_err(|e| pg_error(&e))?;
    shim::install_in_transaction(client, database, SERVICE_ROLE).await
}
