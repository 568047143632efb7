//! The service role as it already exists: what makes it unfit to adopt (and the refusal
//! naming it), whether the installer may administer it, and the temporary SET grant a
//! non-superuser needs for the install's transaction.

use super::installer::Installer;
use super::plan::Step;
use crate::intercept::shim::{pg_error, SERVICE_ROLE};

/// Postgres 16 split role membership into ADMIN, INHERIT and SET: a CREATEROLE role then
/// administers only the roles it created (ADMIN only, `createrole_self_grant` empty by
/// default) and needs SET to create a schema AUTHORIZATION the role or SET ROLE to it.
pub(super) const PG16: i32 = 160_000;

/// The service role as it exists now.
pub(super) struct ExistingRole {
    /// What is wrong with it, each with the statement that removes it.
    pub(super) findings: Vec<(String, String)>,
    /// The installing role holds ADMIN OPTION on it.
    own_admin: bool,
    /// The installing role may SET ROLE to it already.
    own_set: bool,
    /// The installing role holds a grant of it made by itself (Postgres 16+: one row per
    /// grantor; a temporary grant would change that row, so it is restored, not revoked).
    own_self_grant: bool,
}

/// What a non-superuser needs: CREATEROLE to create the role (or change its password), and
/// on Postgres 16+ ADMIN OPTION on an existing one (before 16 CREATEROLE administers every
/// role that is not a superuser).
pub(super) fn check_privileges(
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
pub(super) fn temporary_set_grant(
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
pub(super) async fn existing_role(
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

/// Why an existing service role is not adopted, and how to clear the way.
pub(super) fn refusal(findings: &[(String, String)]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
