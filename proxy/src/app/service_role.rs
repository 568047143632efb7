//! The service role and the shim installed with an administrator's connection, for
//! `pgml-proxy install --upstream <admin url>` and for the embedded Postgres at start. The
//! administrator (a superuser, or a managed Postgres' CREATEROLE admin) creates the
//! least-privilege role or reuses a clean one (a pre-planted one is refused), hands it the
//! shim's objects (only those a superuser owns: never another role's) and installs the shim
//! as that role. An install is planned with read-only checks, then run as one transaction;
//! `--dry-run` prints the same plan instead.

use std::fmt::Write as _;

use crate::intercept::shim::{self, pg_error, SERVICE_ROLE};

/// Postgres 16 split role membership into ADMIN, INHERIT and SET: a CREATEROLE role then
/// administers only the roles it created (ADMIN only, `createrole_self_grant` empty by
/// default) and needs SET to create a schema AUTHORIZATION the role or SET ROLE to it.
const PG16: i32 = 160_000;

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

/// Who is connected, to which database, and what pgml-proxy needs there; read-only.
#[derive(Debug)]
pub struct Installer {
    /// `server_version_num`, e.g. 160004.
    pub server_version: i32,
    /// The database's name.
    pub database: String,
    /// The connected role's name.
    pub user: String,
    /// The connected role is a superuser.
    pub superuser: bool,
    /// The connected role has CREATEROLE.
    pub createrole: bool,
    /// The connected role owns the database.
    pub owns_database: bool,
    /// The connected role may create schemas in the database.
    pub create_on_database: bool,
    /// The schema extension vector was created in (None: not created in this database).
    pub vector_schema: Option<String>,
    /// The version of extension vector the server offers (None: not available at all).
    pub vector_available: Option<String>,
}

impl Installer {
    /// What the connected role may do, in words (for doctor and install's messages).
    pub fn describe(&self) -> String {
        let owner = if self.owns_database {
            format!("owns database {}", self.database)
        } else {
            format!("does not own database {}", self.database)
        };
        if self.superuser {
            format!("{}: superuser", self.user)
        } else if self.createrole {
            format!("{}: CREATEROLE admin, not a superuser, {owner}", self.user)
        } else {
            format!("{}: neither a superuser nor CREATEROLE, {owner}", self.user)
        }
    }
}

/// Reads who is connected and where pgvector lives (found through pg_extension, never
/// through search_path: managed providers put it in `extensions`, `public` or their own).
pub async fn installer(client: &tokio_postgres::Client) -> Result<Installer, String> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4,
                    pg_catalog.current_database()::pg_catalog.text, r.rolname::pg_catalog.text,
                    r.rolsuper, r.rolcreaterole, d.datdba = r.oid,
                    pg_catalog.has_database_privilege(d.oid, 'CREATE'),
                    (SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e
                       JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                      WHERE e.extname = 'vector'),
                    (SELECT a.default_version FROM pg_catalog.pg_available_extensions a
                      WHERE a.name = 'vector')
               FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
              WHERE r.rolname = CURRENT_USER
                AND d.datname = pg_catalog.current_database()",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(Installer {
        server_version: row.get(0),
        database: row.get(1),
        user: row.get(2),
        superuser: row.get(3),
        createrole: row.get(4),
        owns_database: row.get(5),
        create_on_database: row.get(6),
        vector_schema: row.get(7),
        vector_available: row.get(8),
    })
}

/// How to get pgvector into a database, for messages.
pub fn create_vector_hint(database: &str) -> String {
    format!(
        "connect to database {database} as a role allowed to create extensions and run \
         `CREATE EXTENSION vector` (Supabase: `CREATE EXTENSION vector SCHEMA extensions`; \
         RDS, Cloud SQL and Neon let their admin role run `CREATE EXTENSION vector`)"
    )
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

/// One step of an install.
#[derive(Debug)]
enum Step {
    /// A statement; `shown` is its text with the password replaced.
    Sql { sql: String, shown: String },
    /// `shim::install_in_transaction` as the service role: its ownership checks, then the
    /// shim's body unless this version is installed (`body_runs` says which, as planned).
    Shim { body_runs: bool },
}

impl Step {
    fn sql(sql: impl Into<String>) -> Step {
        let sql = sql.into();
        Step::Sql {
            shown: sql.clone(),
            sql,
        }
    }
}

/// What an install will do, decided by read-only checks.
#[derive(Debug)]
pub struct Plan {
    /// Who installs, where.
    pub installer: Installer,
    steps: Vec<Step>,
    generated_password: Option<String>,
    /// The plan creates extension vector in schema public.
    pub creates_vector: bool,
}

impl Plan {
    /// The whole transaction as SQL text, passwords replaced (what `--dry-run` prints).
    pub fn script(&self) -> String {
        let mut text = format!("{};\n", shim::begin_install());
        for step in &self.steps {
            match step {
                Step::Sql { shown, .. } => {
                    let _ = writeln!(text, "{shown};");
                }
                Step::Shim { body_runs: true } => {
                    let _ = writeln!(
                        text,
                        "-- as {SERVICE_ROLE}: the shim's ownership checks, then shim version {}:",
                        shim::SHIM_VERSION
                    );
                    text.push_str(&shim_body());
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                }
                Step::Shim { body_runs: false } => {
                    let _ = writeln!(
                        text,
                        "-- as {SERVICE_ROLE}: the shim's ownership checks (shim version {} is \
                         installed, its body does not run again)",
                        shim::SHIM_VERSION
                    );
                }
            }
        }
        text.push_str("COMMIT;\n");
        text
    }

    /// Runs the steps inside the caller's install transaction.
    async fn execute(self, client: &tokio_postgres::Client) -> Result<AdminInstall, String> {
        let mut installed = false;
        for step in &self.steps {
            match step {
                Step::Sql { sql, shown } => client
                    .batch_execute(sql)
                    .await
                    .map_err(|e| format!("{shown}: {}", pg_error(&e)))?,
                Step::Shim { .. } => {
                    installed = shim::install_in_transaction(
                        client,
                        &self.installer.database,
                        SERVICE_ROLE,
                    )
                    .await?;
                }
            }
        }
        Ok(AdminInstall {
            generated_password: self.generated_password,
            installed,
            vector_schema: if self.creates_vector {
                Some("public".to_owned())
            } else {
                self.installer.vector_schema
            },
            created_vector: self.creates_vector,
        })
    }
}

/// The shim's SQL as `shim::install_in_transaction` runs it: the install script without
/// the BEGIN, install-lock and COMMIT lines around it (those are the plan's own).
fn shim_body() -> String {
    let script = shim::install_script();
    script
        .strip_prefix("BEGIN;\n")
        .and_then(|rest| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.strip_suffix("COMMIT;\n"))
        .map(str::to_owned)
        .unwrap_or(script)
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
            plan(client, password, require_vector)
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
    shim::in_install_transaction(client, plan(client, password, require_vector), |_| false).await
}

/// The service role as it exists now.
struct ExistingRole {
    /// What is wrong with it, each with the statement that removes it.
    findings: Vec<(String, String)>,
    /// The installing role holds ADMIN OPTION on it.
    own_admin: bool,
    /// The installing role may SET ROLE to it already.
    own_set: bool,
    /// The installing role holds a grant of it made by itself (Postgres 16+: one row per
    /// grantor; a temporary grant would change that row, so it is restored, not revoked).
    own_self_grant: bool,
}

/// Read-only checks, then the statements of the install in order.
async fn plan(
    client: &tokio_postgres::Client,
    password: Option<&str>,
    require_vector: bool,
) -> Result<Plan, String> {
    let who = installer(client).await?;
    let existing = existing_role(client, who.server_version).await?;
    if let Some(role) = &existing {
        if !role.findings.is_empty() {
            return Err(refusal(&role.findings));
        }
    }
    let must_alter_password = existing.is_some() && password.is_some();
    if !who.superuser {
        check_privileges(&who, existing.as_ref(), must_alter_password)?;
    }
    let hand_over = hand_over_statements(client).await?;
    if !hand_over.is_empty() && !who.superuser {
        return Err(format!(
            "the shim's objects in database {} belong to a superuser (an install before shim \
             version 4), and only a superuser may give them to {SERVICE_ROLE}: run \
             `pgml-proxy install` once as a superuser, or have a superuser drop schemas pgml and \
             pgml_proxy, then run it as {} again",
            who.database, who.user
        ));
    }
    let missing_schemas: Vec<String> = client
        .query(
            "SELECT s.name FROM pg_catalog.unnest(ARRAY['pgml', 'pgml_proxy']) AS s(name)
              WHERE pg_catalog.to_regnamespace(s.name) IS NULL",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !missing_schemas.is_empty() && !who.create_on_database {
        return Err(format!(
            "role {} may not create schemas ({}) in database {}: it has no CREATE privilege \
             there. Run install as the database's owner (on a managed Postgres, the admin role \
             that created the database), or have the owner run `GRANT CREATE ON DATABASE {} TO {}`",
            who.user,
            missing_schemas.join(", "),
            who.database,
            who.database,
            who.user
        ));
    }
    let create_vector = require_vector && who.vector_schema.is_none();
    if create_vector && who.vector_available.is_none() {
        return Err(format!(
            "extension vector (pgvector) is not available on this server, so database {} \
             cannot have it: install the pgvector package for this Postgres (on a managed \
             Postgres, pick a version that offers it), run `CREATE EXTENSION vector` in the \
             database, then run install again",
            who.database
        ));
    }
    if create_vector && !who.superuser {
        return Err(format!(
            "extension vector (pgvector) is not installed in database {}: {}; then run install \
             again",
            who.database,
            create_vector_hint(&who.database)
        ));
    }

    let database_ident: String = client
        .query_one(
            "SELECT pg_catalog.quote_ident(pg_catalog.current_database())",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    let mut steps = Vec::new();
    let mut generated_password = None;
    if create_vector {
        // Only a superuser gets here (pgvector is not a trusted extension): it does what the
        // embedded Postgres does at start, in the schema CREATE EXTENSION would pick by default.
        steps.push(Step::sql("CREATE EXTENSION vector SCHEMA public"));
    }
    match (&existing, password) {
        (None, _) => {
            let (secret, shown) = match password {
                Some(given) => (given.to_owned(), "'<redacted>'"),
                None => {
                    let fresh = random_password()?;
                    generated_password = Some(fresh.clone());
                    (fresh, "'<generated>'")
                }
            };
            if !who.superuser && who.server_version >= PG16 {
                // A createrole_self_grant set for this admin would give it SET/INHERIT on the
                // new role for good; the install wants ADMIN only (Postgres' own grant).
                steps.push(Step::sql("SET LOCAL createrole_self_grant = ''"));
            }
            let create = format!(
                "CREATE ROLE {SERVICE_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
                 NOREPLICATION NOBYPASSRLS PASSWORD "
            );
            steps.push(Step::Sql {
                sql: format!("{create}{}", quote_literal(client, &secret).await?),
                shown: format!("{create}{shown}"),
            });
        }
        (Some(_), Some(given)) => {
            let alter = format!("ALTER ROLE {SERVICE_ROLE} PASSWORD ");
            steps.push(Step::Sql {
                sql: format!("{alter}{}", quote_literal(client, given).await?),
                shown: format!("{alter}'<redacted>'"),
            });
        }
        (Some(_), None) => {}
    }
    steps.push(Step::sql(format!(
        "GRANT CONNECT ON DATABASE {database_ident} TO {SERVICE_ROLE}"
    )));
    let undo = if who.superuser {
        None
    } else {
        temporary_set_grant(&who, existing.as_ref(), &mut steps)
    };
    steps.extend(hand_over.into_iter().map(Step::sql));
    for schema in &missing_schemas {
        steps.push(Step::sql(format!(
            "CREATE SCHEMA {schema} AUTHORIZATION {SERVICE_ROLE}"
        )));
    }
    steps.push(Step::sql(format!("SET LOCAL ROLE {SERVICE_ROLE}")));
    let shim_version: Option<String> = client
        .query_one(shim::VERSION_QUERY, &[])
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    steps.push(Step::Shim {
        body_runs: shim_version.as_deref() != Some(shim::SHIM_VERSION),
    });
    steps.push(Step::sql("RESET ROLE"));
    if let Some(undo) = undo {
        steps.push(Step::sql(undo));
    }
    Ok(Plan {
        installer: who,
        steps,
        generated_password,
        creates_vector: create_vector,
    })
}

/// What a non-superuser needs: CREATEROLE to create the role (or change its password), and
/// on Postgres 16+ ADMIN OPTION on an existing one (before 16 CREATEROLE administers every
/// role that is not a superuser).
fn check_privileges(
    who: &Installer,
    existing: Option<&ExistingRole>,
    alter_password: bool,
) -> Result<(), String> {
    let as_admin = "Run install as a superuser, or as a role with CREATEROLE that owns the \
                    database (on RDS, Cloud SQL, Supabase and Neon: the admin role the provider \
                    created)";
    match existing {
        None if !who.createrole => Err(format!(
            "role {} may not create role {SERVICE_ROLE}: it lacks CREATEROLE (and is not a \
             superuser). {as_admin}, or have a superuser run `ALTER ROLE {} CREATEROLE`",
            who.user, who.user
        )),
        Some(_) if alter_password && !who.createrole => Err(format!(
            "role {} may not set the password of role {SERVICE_ROLE} \
             ($PGML_PROXY_SERVICE_PASSWORD): it lacks CREATEROLE. {as_admin}",
            who.user
        )),
        Some(role) if who.server_version >= PG16 && !role.own_admin => Err(format!(
            "role {} may not administer the existing role {SERVICE_ROLE}: it lacks ADMIN OPTION \
             on it (since Postgres 16 a CREATEROLE role administers only the roles it created or \
             was granted WITH ADMIN OPTION). Have a superuser run `GRANT {SERVICE_ROLE} TO {} \
             WITH ADMIN OPTION, INHERIT FALSE, SET FALSE`, or `DROP ROLE {SERVICE_ROLE}` so that \
             install creates it; or run install as a superuser",
            who.user, who.user
        )),
        Some(role) if who.server_version < PG16 && !who.createrole && !role.own_admin => {
            Err(format!(
                "role {} may not administer role {SERVICE_ROLE}: it lacks CREATEROLE. {as_admin}",
                who.user
            ))
        }
        _ => Ok(()),
    }
}

/// Appends the statement that lets a non-superuser admin SET ROLE to the service role for
/// this transaction (CREATE SCHEMA ... AUTHORIZATION and SET ROLE need it); returns the
/// statement that takes exactly that grant back, None when it already may.
fn temporary_set_grant(
    who: &Installer,
    existing: Option<&ExistingRole>,
    steps: &mut Vec<Step>,
) -> Option<String> {
    let (own_set, own_self_grant) =
        existing.map_or((false, false), |r| (r.own_set, r.own_self_grant));
    if own_set {
        return None;
    }
    let (grant, undo) = if who.server_version < PG16 {
        // One membership row per role pair, which this admin does not hold (own_set): the
        // revoke removes what the grant added.
        (
            format!("GRANT {SERVICE_ROLE} TO CURRENT_USER"),
            format!("REVOKE {SERVICE_ROLE} FROM CURRENT_USER"),
        )
    } else if own_self_grant {
        // The admin's own earlier grant to itself: add SET to that row, then take SET back.
        (
            format!("GRANT {SERVICE_ROLE} TO CURRENT_USER WITH SET TRUE GRANTED BY CURRENT_USER"),
            format!(
                "REVOKE SET OPTION FOR {SERVICE_ROLE} FROM CURRENT_USER GRANTED BY CURRENT_USER"
            ),
        )
    } else {
        // A new row granted by the admin itself, beside the ADMIN row Postgres recorded as
        // the bootstrap superuser's grant at CREATE ROLE: revoking it leaves that one intact.
        (
            format!(
                "GRANT {SERVICE_ROLE} TO CURRENT_USER WITH SET TRUE, INHERIT FALSE GRANTED BY CURRENT_USER"
            ),
            format!("REVOKE {SERVICE_ROLE} FROM CURRENT_USER GRANTED BY CURRENT_USER"),
        )
    };
    steps.push(Step::sql(grant));
    Some(undo)
}

/// The service role as it exists, with everything that makes it more than a role a previous
/// install created: another role's membership or ADMIN OPTION (it could log in as it, or
/// give it to anyone), its own membership in other roles (it would inherit their rights),
/// an attribute beyond LOGIN. None when it does not exist.
async fn existing_role(
    client: &tokio_postgres::Client,
    server_version: i32,
) -> Result<Option<ExistingRole>, String> {
    let Some(row) = client
        .query_opt(
            "SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls,
                    r.rolcanlogin
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?
    else {
        return Ok(None);
    };
    let mut findings = Vec::new();
    for (index, attribute) in [
        "SUPERUSER",
        "CREATEDB",
        "CREATEROLE",
        "REPLICATION",
        "BYPASSRLS",
    ]
    .iter()
    .enumerate()
    {
        if row.get::<_, bool>(index) {
            findings.push((
                format!("it has {attribute}"),
                format!("ALTER ROLE {SERVICE_ROLE} NO{attribute}"),
            ));
        }
    }
    if !row.get::<_, bool>(5) {
        findings.push((
            "it cannot log in (NOLOGIN)".to_owned(),
            format!("ALTER ROLE {SERVICE_ROLE} LOGIN"),
        ));
    }
    let memberships = client
        .query(
            "WITH svc AS (SELECT r.oid FROM pg_catalog.pg_roles r
                           WHERE r.rolname = $1),
                  me AS (SELECT r.oid FROM pg_catalog.pg_roles r
                          WHERE r.rolname = CURRENT_USER)
             SELECT pg_catalog.format(CASE WHEN m.admin_option
                        THEN 'role %I holds ADMIN OPTION on it (granted by %I)'
                        ELSE 'role %I is a member of it (granted by %I)' END,
                        pg_catalog.pg_get_userbyid(m.member), pg_catalog.pg_get_userbyid(m.grantor)),
                    pg_catalog.format('REVOKE %I FROM %I', $1::pg_catalog.text,
                        pg_catalog.pg_get_userbyid(m.member))
               FROM pg_catalog.pg_auth_members m, svc, me
              WHERE m.roleid = svc.oid AND m.member <> me.oid
             UNION ALL
             SELECT pg_catalog.format('it is a member of role %I (granted by %I)',
                        pg_catalog.pg_get_userbyid(m.roleid), pg_catalog.pg_get_userbyid(m.grantor)),
                    pg_catalog.format('REVOKE %I FROM %I', pg_catalog.pg_get_userbyid(m.roleid),
                        $1::pg_catalog.text)
               FROM pg_catalog.pg_auth_members m, svc
              WHERE m.member = svc.oid",
            &[&SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    findings.extend(memberships.iter().map(|r| (r.get(0), r.get(1))));
    // The installing role's own grants: several rows (one per grantor) from Postgres 16 on,
    // where SET is an option of its own; before, being a member is being able to SET ROLE.
    let own_query = if server_version >= PG16 {
        "SELECT pg_catalog.bool_or(m.admin_option), pg_catalog.bool_or(m.set_option),
                pg_catalog.bool_or(m.grantor = m.member)"
    } else {
        "SELECT pg_catalog.bool_or(m.admin_option), pg_catalog.count(*) > 0,
                pg_catalog.bool_or(m.grantor = m.member)"
    };
    let own = client
        .query_one(
            &format!(
                "{own_query}
                   FROM pg_catalog.pg_auth_members m
                  WHERE m.roleid = (SELECT r.oid FROM pg_catalog.pg_roles r
                                                          WHERE r.rolname = $1)
                    AND m.member = (SELECT r.oid FROM pg_catalog.pg_roles r
                                                          WHERE r.rolname = CURRENT_USER)"
            ),
            &[&SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(Some(ExistingRole {
        findings,
        own_admin: own.get::<_, Option<bool>>(0).unwrap_or(false),
        own_set: own.get::<_, Option<bool>>(1).unwrap_or(false),
        own_self_grant: own.get::<_, Option<bool>>(2).unwrap_or(false),
    }))
}

/// `text` as a SQL string literal, quoted by the server (which knows its own
/// standard_conforming_strings).
async fn quote_literal(client: &tokio_postgres::Client, text: &str) -> Result<String, String> {
    client
        .query_one(
            "SELECT pg_catalog.quote_literal($1::pg_catalog.text)",
            &[&text],
        )
        .await
        .map(|row| row.get(0))
        .map_err(|e| pg_error(&e))
}

/// Why an existing service role is not adopted, and how to clear the way.
fn refusal(findings: &[(String, String)]) -> String {
    let found: Vec<&str> = findings.iter().map(|(f, _)| f.as_str()).collect();
    let mut fixes: Vec<&str> = Vec::new();
    for (_, fix) in findings {
        if !fixes.contains(&fix.as_str()) {
            fixes.push(fix);
        }
    }
    format!(
        "role {SERVICE_ROLE} already exists and is not one pgml-proxy install would create: {}. \
         pgml-proxy does not adopt a role other roles can use, control or lend rights to, and \
         changed nothing. As a superuser (or the grantor named), run `{}`; or drop the role \
         (`DROP ROLE {SERVICE_ROLE}`, after `DROP OWNED BY {SERVICE_ROLE}` in each database where \
         it owns objects) and run install again to create a fresh one",
        found.join("; "),
        fixes.join("; ")
    )
}

/// Shim objects a superuser owns (installs before version 4) go to the service role.
async fn hand_over_statements(client: &tokio_postgres::Client) -> Result<Vec<String>, String> {
    Ok(client
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
              WHERE n.nspname IN ('pgml', 'pgml_proxy') AND o.rolsuper",
            &[&SERVICE_ROLE],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_body_is_the_script_without_its_transaction() {
        let body = shim_body();
        assert!(
            body.starts_with("SET LOCAL client_min_messages"),
            "{body:.80}"
        );
        assert!(body.contains("pgml.embed"));
        assert!(!body.contains("pg_advisory_xact_lock"));
        assert!(!body.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn a_refusal_names_what_was_found_and_each_fix_once() {
        let text = refusal(&[
            (
                "it has CREATEDB".into(),
                "ALTER ROLE pgml_proxy_service NOCREATEDB".into(),
            ),
            (
                "role mallory is a member of it (granted by postgres)".into(),
                "REVOKE pgml_proxy_service FROM mallory".into(),
            ),
            (
                "role mallory is a member of it (granted by bob)".into(),
                "REVOKE pgml_proxy_service FROM mallory".into(),
            ),
        ]);
        assert!(text.contains("it has CREATEDB; role mallory"), "{text}");
        assert!(text.contains(
            "`ALTER ROLE pgml_proxy_service NOCREATEDB; REVOKE pgml_proxy_service FROM mallory`"
        ), "{text}");
        assert!(text.contains("DROP ROLE pgml_proxy_service"), "{text}");
    }
}
