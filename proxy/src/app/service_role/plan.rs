//! The install plan: read-only checks turned into the statements of one transaction (create
//! or reuse the role, hand over the shim's objects, install the shim as it), printed by
//! `--dry-run` or executed. The checks on the existing role itself are role.rs's.

use std::fmt::Write as _;

use super::installer::{create_vector_hint, installer, Installer};
use super::role::{check_privileges, existing_role, refusal, temporary_set_grant, PG16};
use super::{random_password, AdminInstall};
use crate::intercept::shim::{self, pg_error, SERVICE_ROLE};

/// One step of an install.
#[derive(Debug)]
pub(super) enum Step {
    /// A statement; `shown` is its text with the password replaced.
    Sql { sql: String, shown: String },
    /// `shim::install_in_transaction` as the service role: its ownership checks, then the
    /// shim's body unless this version is installed (`body_runs` says which, as planned).
    Shim { body_runs: bool },
}

impl Step {
    pub(super) fn sql(sql: impl Into<String>) -> Step {
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
    pub(super) async fn execute(
        self,
        client: &tokio_postgres::Client,
    ) -> Result<AdminInstall, String> {
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

/// The shim's SQL as `shim::install_in_transaction` runs it (the transaction and install
/// lock around it are the plan's own).
fn shim_body() -> String {
    format!(
        "SET LOCAL client_min_messages = warning;\n{}\n",
        shim::install_body()
    )
}

/// Read-only checks, then the statements of the install in order.
pub(super) async fn plan(
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
    fn the_shim_body_is_the_shim_sql_as_installed() {
        let body = shim_body();
        assert!(
            body.starts_with("SET LOCAL client_min_messages"),
            "{body:.80}"
        );
        assert!(body.contains("pgml.embed"));
    }
}
