//! `pgml-proxy install` as a managed Postgres' admin (CREATEROLE and CREATEDB, owner of the
//! application database, no superuser; pgvector in schema `extensions`), the proxy serving an
//! application role in front of it, `--dry-run`, and the refusals: a pre-planted service role,
//! an admin without CREATEROLE, a database without pgvector.
//!
//! The service role is cluster-wide: every test takes `SERIAL`, then removes the one the
//! embedded start created (or a previous test left), so each starts without it. Only this
//! binary's own embedded Postgres is touched; its proxy is not used.

use std::process::Command;
use std::time::Duration;

use pgml_integration_tests::{
    connect, proxy_bin, psql_script, run_tool, scratch_dir, stack, Proxy, DEFAULT_MODEL,
};

const SERVICE_ROLE: &str = "pgml_proxy_service";
const ADMIN: &str = "managed_admin";
const ADMIN_PASSWORD: &str = "managed-admin-pw";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_port() -> u16 {
    stack().pg_port.expect("the stack has an embedded Postgres")
}

fn direct(user: &str, password: &str, database: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{database}",
        pg_port()
    )
}

async fn superuser(database: &str) -> tokio_postgres::Client {
    connect(&direct("postgres", "postgres", database))
        .await
        .unwrap_or_else(|e| panic!("superuser connection to {database}: {e}"))
}

/// `pgml-proxy install` with `args`; (success, stdout, stderr).
fn install(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(proxy_bin());
    cmd.arg("install")
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PGML_PROXY_SERVICE_PASSWORD");
    for (name, value) in env {
        cmd.env(name, value);
    }
    run_tool(&mut cmd)
}

fn admin_url(database: &str) -> String {
    direct(ADMIN, ADMIN_PASSWORD, database)
}

/// Removes the service role and everything it owns, in every database.
async fn drop_service_role() {
    let postgres = superuser("postgres").await;
    let exists: bool = postgres
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
            &[&SERVICE_ROLE],
        )
        .await
        .expect("role lookup")
        .get(0);
    if !exists {
        return;
    }
    let databases: Vec<String> = postgres
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn",
            &[],
        )
        .await
        .expect("databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for database in databases {
        superuser(&database)
            .await
            .batch_execute(&format!("DROP OWNED BY {SERVICE_ROLE}"))
            .await
            .unwrap_or_else(|e| panic!("DROP OWNED in {database}: {e}"));
    }
    postgres
        .batch_execute(&format!("DROP ROLE {SERVICE_ROLE}"))
        .await
        .expect("DROP ROLE pgml_proxy_service");
}

/// The managed admin and the application role (once), and a fresh database owned by `owner`,
/// with pgvector in schema `extensions` when `vector`, as Supabase lays it out.
async fn managed_database(database: &str, owner: &str, vector: bool) {
    let postgres = superuser("postgres").await;
    postgres
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256';
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ADMIN}') THEN
                     CREATE ROLE {ADMIN} LOGIN CREATEDB CREATEROLE PASSWORD '{ADMIN_PASSWORD}';
                 END IF;
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_user') THEN
                     CREATE ROLE app_user LOGIN PASSWORD 'app-pw';
                 END IF;
             END $$;"
        ))
        .await
        .expect("roles");
    // (One statement each: DROP and CREATE DATABASE refuse to run in a transaction.)
    for sql in [
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database} OWNER {owner} TEMPLATE template0"),
    ] {
        postgres.batch_execute(&sql).await.expect(&sql);
    }
    let db = superuser(database).await;
    db.batch_execute(&format!(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         ALTER DATABASE {database} SET search_path = \"$user\", public, extensions"
    ))
    .await
    .expect("database settings");
    if vector {
        db.batch_execute(
            "CREATE SCHEMA extensions; GRANT USAGE ON SCHEMA extensions TO PUBLIC;
             CREATE EXTENSION vector SCHEMA extensions",
        )
        .await
        .expect("pgvector in schema extensions");
    }
}

async fn role_exists(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
            &[&SERVICE_ROLE],
        )
        .await
        .expect("role lookup")
        .get(0)
}

async fn shim_schemas(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('pgml', 'pgml_proxy')",
            &[],
        )
        .await
        .expect("schemas")
        .get(0)
}

/// The service role's attributes and every membership row it is part of, as text.
async fn role_state(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%s super=%s createdb=%s createrole=%s replication=%s bypassrls=%s login=%s',
                           rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin)
               FROM pg_roles WHERE rolname = $1
             UNION ALL
             SELECT format('%s in %s by %s admin=%s inherit=%s set=%s', member::regrole, roleid::regrole,
                           grantor::regrole, admin_option, inherit_option, set_option)
               FROM pg_auth_members
              WHERE roleid = $1::text::regrole OR member = $1::text::regrole
             ORDER BY 1",
            &[&SERVICE_ROLE],
        )
        .await
        .expect("role state")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The admin's grants of the service role: (admin, inherit, set) per row.
async fn admin_grants(client: &tokio_postgres::Client) -> Vec<(bool, bool, bool)> {
    client
        .query(
            "SELECT admin_option, inherit_option, set_option FROM pg_auth_members
              WHERE roleid = $1::text::regrole AND member = $2::text::regrole",
            &[&SERVICE_ROLE, &ADMIN],
        )
        .await
        .expect("admin grants")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_createrole_admin_installs_as_the_service_role_and_keeps_no_set_grant() {
    let _serial = SERIAL.lock().await;
    drop_service_role().await;
    let database = "managed_app";
    managed_database(database, ADMIN, true).await;
    let db = superuser(database).await;

    // --dry-run: the whole transaction, the password hidden, and nothing done.
    let (ok, out, err) = install(&["--upstream", &admin_url(database), "--dry-run"], &[]);
    assert!(ok, "install --dry-run failed: {out}\n{err}");
    for expected in [
        "\nBEGIN;",
        "CREATE ROLE pgml_proxy_service LOGIN NOSUPERUSER",
        "PASSWORD '<generated>';",
        "GRANT pgml_proxy_service TO CURRENT_USER WITH SET TRUE, INHERIT FALSE GRANTED BY CURRENT_USER;",
        "CREATE SCHEMA pgml AUTHORIZATION pgml_proxy_service;",
        "SET LOCAL ROLE pgml_proxy_service;",
        "CREATE OR REPLACE FUNCTION pgml.embed(transformer text, \"text\" text",
        "RESET ROLE;\nREVOKE pgml_proxy_service FROM CURRENT_USER GRANTED BY CURRENT_USER;\nCOMMIT;\n",
        "extension vector in schema extensions",
    ] {
        assert!(out.contains(expected), "{expected:?} not in the dry run:\n{out}");
    }
    assert_eq!(
        out.matches("PASSWORD '").count(),
        out.matches("PASSWORD '<generated>'").count(),
        "a password in the dry run:\n{out}"
    );
    assert!(!role_exists(&db).await, "--dry-run created the role");
    assert_eq!(shim_schemas(&db).await, 0, "--dry-run created schemas");

    // The install itself.
    let (ok, out, err) = install(&["--upstream", &admin_url(database)], &[]);
    assert!(ok, "install as the CREATEROLE admin failed: {out}\n{err}");
    assert!(
        out.contains("installed, owned by role pgml_proxy_service"),
        "{out}"
    );
    assert!(
        out.contains("pgvector: extension vector in schema extensions"),
        "{out}"
    );
    let password = out
        .split_once("created role pgml_proxy_service with password ")
        .and_then(|(_, rest)| rest.split_once(" (shown once)"))
        .map(|(password, _)| password.to_owned())
        .unwrap_or_else(|| panic!("no generated password in: {out}"));
    assert_eq!(password.len(), 32, "{password}");
    let owners = pgml_integration_tests::shim_owners(&db).await;
    assert!(owners.len() > 10, "{owners:?}");
    assert!(owners.iter().any(|(o, _)| o == "pgml"), "{owners:?}");
    assert!(owners.iter().any(|(o, _)| o == "pgml_proxy"), "{owners:?}");
    for (object, owner) in &owners {
        assert_eq!(owner, SERVICE_ROLE, "{object}");
    }
    // Only the ADMIN grant Postgres 16 records at CREATE ROLE: the SET grant is gone.
    assert_eq!(
        admin_grants(&db).await,
        vec![(true, false, false)],
        "{:?}",
        role_state(&db).await
    );
    let state = role_state(&db).await;
    assert_eq!(state.len(), 2, "one role, one membership row: {state:?}");

    // Again: nothing to do, nothing left behind.
    let (ok, out, err) = install(&["--upstream", &admin_url(database)], &[]);
    assert!(ok && out.contains("already installed"), "{out}\n{err}");
    assert!(!out.contains("created role"), "{out}");
    assert_eq!(role_state(&db).await, state);

    // doctor as the admin.
    let (_, report, err) = run_tool(
        Command::new(proxy_bin())
            .args(["doctor", "--upstream", &admin_url(database)])
            .env("RUST_LOG", "warn"),
    );
    assert!(
        report.contains(
            "managed_admin: CREATEROLE admin, not a superuser, owns database managed_app"
        ),
        "{report}\n{err}"
    );
    assert!(
        report.contains("extension vector 0.") && report.contains("in schema extensions"),
        "{report}"
    );

    // A proxy in front, with the service role for upcalls; the application role may create
    // nothing anywhere.
    let proxy = Proxy::spawn(
        "managed",
        &[
            "--upstream",
            &format!("postgres://127.0.0.1:{}", pg_port()),
            "--service-url",
            &direct(SERVICE_ROLE, &password, database),
            "--offline",
            "--shutdown-timeout",
            "2",
        ],
    );
    let app_url = format!(
        "postgres://app_user:app-pw@127.0.0.1:{}/{database}",
        proxy.port
    );
    let app = connect(&app_url).await.expect("app_user through the proxy");
    let embedding: Vec<f32> = app
        .query_one(&format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'hi')"), &[])
        .await
        .expect("pgml.embed through the proxy")
        .get(0);
    assert_eq!(embedding.len(), 384);
    assert!(embedding.iter().all(|x| x.is_finite()));
    let dims: i32 = app
        .query_one(
            &format!(
                "SELECT extensions.vector_dims(pgml.embed('{DEFAULT_MODEL}', 'hi')::extensions.vector(384))"
            ),
            &[],
        )
        .await
        .expect("pgml.embed cast to extensions.vector(384)")
        .get(0);
    assert_eq!(dims, 384);
    // An upcall: pgml.embed inside a DO block is answered through the service role.
    let (ok, out, err) = psql_script(
        &app_url,
        &scratch_dir().join("managed-upcall"),
        &format!(
            "\\set ON_ERROR_STOP 1\n\
             DO $$ DECLARE e real[]; BEGIN\n\
                 e := pgml.embed('{DEFAULT_MODEL}', 'an upcall');\n\
                 RAISE NOTICE 'upcall dims %', array_length(e, 1);\n\
             END $$;\n"
        ),
    );
    assert!(
        ok && err.contains("NOTICE:  upcall dims 384"),
        "{out}\n{err}\n{}",
        proxy.log()
    );
    drop(app);
    proxy.begin_shutdown();
    assert!(proxy.wait_exit(Duration::from_secs(30)).is_some());
}

/// Plants a service role with `plant` (run by the superuser), runs install as the admin and
/// checks that it refuses with `expected` in its message and changed nothing.
async fn assert_refused(database: &str, plant: &str, expected: &[&str]) {
    drop_service_role().await;
    let postgres = superuser("postgres").await;
    postgres
        .batch_execute(plant)
        .await
        .unwrap_or_else(|e| panic!("planting with {plant}: {e}"));
    let db = superuser(database).await;
    let before = role_state(&db).await;
    let (ok, out, err) = install(&["--upstream", &admin_url(database)], &[]);
    assert!(!ok, "install adopted a planted role ({plant}): {out}");
    for text in expected {
        assert!(err.contains(text), "{text:?} not in the refusal: {err}");
    }
    assert_eq!(role_state(&db).await, before, "the planted role changed");
    assert_eq!(shim_schemas(&db).await, 0, "schemas created: {err}");
}

#[tokio::test]
async fn a_pre_planted_service_role_is_refused_and_left_as_it_was() {
    let _serial = SERIAL.lock().await;
    let database = "managed_planted";
    managed_database(database, ADMIN, true).await;
    // What Postgres 16 records when the admin creates the role itself.
    let admin_grant =
        format!("GRANT {SERVICE_ROLE} TO {ADMIN} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE");
    assert_refused(
        database,
        &format!(
            "CREATE ROLE {SERVICE_ROLE} LOGIN; {admin_grant};
             DROP ROLE IF EXISTS planted_member; CREATE ROLE planted_member LOGIN;
             GRANT {SERVICE_ROLE} TO planted_member"
        ),
        &[
            "role planted_member is a member of it (granted by postgres)",
            "REVOKE pgml_proxy_service FROM planted_member",
            "changed nothing",
        ],
    )
    .await;
    assert_refused(
        database,
        "DROP ROLE IF EXISTS other_admin; CREATE ROLE other_admin LOGIN CREATEROLE;
         SET ROLE other_admin; CREATE ROLE pgml_proxy_service LOGIN; RESET ROLE",
        &[
            "role other_admin holds ADMIN OPTION on it",
            "REVOKE pgml_proxy_service FROM other_admin",
            "DROP ROLE pgml_proxy_service",
        ],
    )
    .await;
    assert_refused(
        database,
        &format!("CREATE ROLE {SERVICE_ROLE} LOGIN CREATEDB; {admin_grant}"),
        &[
            "it has CREATEDB",
            "ALTER ROLE pgml_proxy_service NOCREATEDB",
        ],
    )
    .await;
    assert_refused(
        database,
        &format!("CREATE ROLE {SERVICE_ROLE} LOGIN; {admin_grant}; GRANT pg_read_all_data TO {SERVICE_ROLE}"),
        &[
            "it is a member of role pg_read_all_data",
            "REVOKE pg_read_all_data FROM pgml_proxy_service",
        ],
    )
    .await;
    // A clean role this admin may not administer (a superuser created it).
    assert_refused(
        database,
        &format!("CREATE ROLE {SERVICE_ROLE} LOGIN"),
        &[
            "lacks ADMIN OPTION",
            "GRANT pgml_proxy_service TO managed_admin WITH ADMIN OPTION",
        ],
    )
    .await;

    // A clean role the admin administers is reused, its password kept unless one is given.
    drop_service_role().await;
    let postgres = superuser("postgres").await;
    postgres
        .batch_execute(&format!(
            "CREATE ROLE {SERVICE_ROLE} LOGIN PASSWORD 'kept-pw'; {admin_grant}"
        ))
        .await
        .expect("a clean role");
    let secret = || async {
        superuser("postgres")
            .await
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&SERVICE_ROLE],
            )
            .await
            .expect("rolpassword")
            .get::<_, String>(0)
    };
    let kept = secret().await;
    let (ok, out, err) = install(&["--upstream", &admin_url(database)], &[]);
    assert!(ok, "install with a clean role failed: {out}\n{err}");
    assert!(!out.contains("created role"), "{out}");
    assert_eq!(secret().await, kept, "the password changed");
    let db = superuser(database).await;
    assert_eq!(admin_grants(&db).await, vec![(true, false, false)]);
    let (ok, out, err) = install(
        &["--upstream", &admin_url(database)],
        &[("PGML_PROXY_SERVICE_PASSWORD", "given-pw")],
    );
    assert!(ok && out.contains("already installed"), "{out}\n{err}");
    assert_ne!(secret().await, kept, "the given password was not set");
    assert_eq!(admin_grants(&db).await, vec![(true, false, false)]);

    // The admin's own grant to itself (INHERIT, no SET) gets SET for the transaction only.
    let admin = connect(&admin_url(database)).await.expect("admin");
    admin
        .batch_execute(&format!(
            "GRANT {SERVICE_ROLE} TO CURRENT_USER WITH INHERIT TRUE, SET FALSE GRANTED BY CURRENT_USER"
        ))
        .await
        .expect("the admin's own grant");
    let before = role_state(&db).await;
    let (ok, out, err) = install(&["--upstream", &admin_url(database), "--dry-run"], &[]);
    assert!(
        ok && out.contains(
            "REVOKE SET OPTION FOR pgml_proxy_service FROM CURRENT_USER GRANTED BY CURRENT_USER;"
        ),
        "{out}\n{err}"
    );
    let (ok, out, err) = install(&["--upstream", &admin_url(database)], &[]);
    assert!(ok && out.contains("already installed"), "{out}\n{err}");
    assert_eq!(role_state(&db).await, before);
}

#[tokio::test]
async fn install_names_createrole_and_create_extension_vector_when_they_are_missing() {
    let _serial = SERIAL.lock().await;
    drop_service_role().await;

    // No pgvector in the database: nothing is created, and the message says what to run.
    let database = "managed_novector";
    managed_database(database, ADMIN, false).await;
    let (ok, out, err) = install(&["--upstream", &admin_url(database)], &[]);
    assert!(!ok, "install without pgvector succeeded: {out}");
    assert!(
        err.contains("extension vector (pgvector) is not installed in database managed_novector")
            && err.contains("CREATE EXTENSION vector SCHEMA extensions"),
        "{err}"
    );
    let db = superuser(database).await;
    assert!(!role_exists(&db).await, "the role was created");
    assert_eq!(shim_schemas(&db).await, 0);
    let (_, report, _) = run_tool(
        Command::new(proxy_bin())
            .args(["doctor", "--upstream", &admin_url(database)])
            .env("RUST_LOG", "warn"),
    );
    assert!(
        report.contains("available but not created in database managed_novector")
            && report.contains("CREATE EXTENSION vector"),
        "{report}"
    );

    // An owner without CREATEROLE.
    let database = "managed_plain";
    superuser("postgres")
        .await
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'plain_owner') THEN
                     CREATE ROLE plain_owner LOGIN CREATEDB PASSWORD 'plain-pw';
                 END IF;
             END $$;",
        )
        .await
        .expect("role plain_owner");
    managed_database(database, "plain_owner", true).await;
    let url = direct("plain_owner", "plain-pw", database);
    let (ok, out, err) = install(&["--upstream", &url], &[]);
    assert!(!ok, "install without CREATEROLE succeeded: {out}");
    assert!(
        err.contains(
            "role plain_owner may not create role pgml_proxy_service: it lacks CREATEROLE"
        ),
        "{err}"
    );
    let db = superuser(database).await;
    assert!(!role_exists(&db).await, "the role was created");
    assert_eq!(shim_schemas(&db).await, 0);
    let (_, report, _) = run_tool(
        Command::new(proxy_bin())
            .args(["doctor", "--upstream", &url])
            .env("RUST_LOG", "warn"),
    );
    assert!(
        report.contains("plain_owner: neither a superuser nor CREATEROLE"),
        "{report}"
    );
}
