//! A hostile database owner and a nosy role against the shim and the service connection:
//! the service role is no superuser, pre-planted shim objects with a trigger are refused
//! (nothing written, no code run as the service role), answers are readable by the service
//! role only and gone once consumed.

use pgml_integration_tests::{connect, psql_script, scratch_dir, stack, DEFAULT_MODEL};

fn through_proxy(user: &str, password: &str, database: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{database}",
        stack().port
    )
}

fn direct(user: &str, password: &str, database: &str) -> String {
    let port = stack().pg_port.expect("embedded Postgres");
    format!("postgres://{user}:{password}@127.0.0.1:{port}/{database}")
}

#[tokio::test]
async fn the_service_connection_is_not_a_superuser() {
    // A first upcall opens the service connection.
    let client = connect(&stack().url()).await.expect("connect");
    client
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'service role check'); END $$"
        ))
        .await
        .expect("an upcall through the proxy");
    let admin = connect(&stack().direct_url()).await.expect("direct");
    let rows = admin
        .query(
            "SELECT a.usename::text, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls
               FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
              WHERE a.application_name = 'pgml-proxy upcall service'",
            &[],
        )
        .await
        .expect("pg_stat_activity");
    assert!(!rows.is_empty(), "the service connection is open");
    for row in rows {
        assert_eq!(row.get::<_, String>(0), "pgml_proxy_service");
        assert!(!row.get::<_, bool>(1), "superuser");
        assert!(!row.get::<_, bool>(2), "createdb");
        assert!(!row.get::<_, bool>(3), "createrole");
        assert!(!row.get::<_, bool>(4), "bypassrls");
    }
}

#[tokio::test]
async fn answers_are_private_to_the_service_role_and_gone_once_consumed() {
    let admin = connect(&stack().direct_url()).await.expect("direct");
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS nosy; SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE nosy LOGIN PASSWORD 'nosy-pw'",
        )
        .await
        .expect("role nosy");
    let client = connect(&stack().url()).await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE TABLE private_docs (body text, emb real[]);
             CREATE FUNCTION private_docs_embed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.emb := pgml.embed('{DEFAULT_MODEL}', NEW.body); RETURN NEW; END $$;
             CREATE TRIGGER private_docs_embed BEFORE INSERT ON private_docs
                FOR EACH ROW EXECUTE FUNCTION private_docs_embed();
             INSERT INTO private_docs (body) VALUES ('a secret'), ('another secret');"
        ))
        .await
        .expect("upcalled inserts");
    let filled: i64 = client
        .query_one("SELECT count(emb) FROM private_docs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(filled, 2);
    // Consumed answers are deleted by the session that read them, at once.
    let left: i64 = admin
        .query_one("SELECT count(*) FROM pgml_proxy.upcall_answer", &[])
        .await
        .expect("answers left")
        .get(0);
    assert_eq!(left, 0, "no answer rows remain after the statement");

    let nosy = connect(&direct("nosy", "nosy-pw", "postgres"))
        .await
        .expect("nosy connects directly");
    let err = nosy
        .query("SELECT * FROM pgml_proxy.upcall_answer", &[])
        .await
        .expect_err("nosy may not read the answers");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("42501"),
        "{err}"
    );
}

#[tokio::test]
async fn a_database_owner_cannot_make_the_service_role_run_her_trigger() {
    let admin = connect(&stack().direct_url()).await.expect("direct");
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE mallory LOGIN CREATEDB PASSWORD 'mallory-pw'",
        )
        .await
        .expect("role mallory");
    let mallory = connect(&direct("mallory", "mallory-pw", "postgres"))
        .await
        .expect("mallory connects directly");
    mallory
        .batch_execute("CREATE DATABASE evil TEMPLATE template0")
        .await
        .expect("mallory creates her database");
    drop(mallory);
    let evil = connect(&direct("mallory", "mallory-pw", "evil"))
        .await
        .expect("mallory in evil");
    // The shim's schemas, pre-planted: a table whose trigger would run as whoever writes an
    // answer, and a fake pgml.embed that asks the proxy for one and waits a little.
    evil.batch_execute(
        "CREATE TABLE public.evidence (who text, superuser bool);
         GRANT INSERT ON public.evidence TO PUBLIC;
         CREATE SCHEMA pgml_proxy;
         CREATE SCHEMA pgml;
         COMMENT ON SCHEMA pgml_proxy IS 'shim version 5';
         CREATE TABLE pgml_proxy.upcall_answer (request_id uuid, ord int, embedding real[],
             error_sqlstate text, error_message text, created_at timestamptz DEFAULT now());
         GRANT ALL ON pgml_proxy.upcall_answer TO PUBLIC;
         GRANT USAGE ON SCHEMA pgml_proxy TO PUBLIC;
         CREATE FUNCTION pgml_proxy.steal() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.evidence
                  SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
             BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
             RETURN NEW;
         END $$;
         CREATE TRIGGER steal BEFORE INSERT ON pgml_proxy.upcall_answer
             FOR EACH ROW EXECUTE FUNCTION pgml_proxy.steal();
         CREATE TRIGGER steal_statement AFTER INSERT ON pgml_proxy.upcall_answer
             FOR EACH STATEMENT EXECUTE FUNCTION pgml_proxy.steal();
         CREATE FUNCTION pgml_proxy.upcall_call(fn text, model text, inputs text[], kwargs jsonb, query text)
         RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
         DECLARE request uuid := gen_random_uuid(); deadline timestamptz := clock_timestamp() + interval '3 seconds';
         BEGIN
             RAISE NOTICE USING MESSAGE = 'pgml-proxy:upcall:' || request::text,
                 DETAIL = json_build_object('function', $1, 'model', $2, 'inputs', $3, 'kwargs', $4)::text;
             LOOP
                 PERFORM 1 FROM pgml_proxy.upcall_answer a WHERE a.request_id = request;
                 EXIT WHEN FOUND;
                 IF clock_timestamp() > deadline THEN
                     RAISE EXCEPTION 'mallory: no answer';
                 END IF;
                 PERFORM pg_sleep(0.05);
             END LOOP;
         END $$;
         CREATE FUNCTION pgml.embed(transformer text, \"text\" text, kwargs jsonb DEFAULT '{}')
         RETURNS real[] LANGUAGE plpgsql AS $$
         BEGIN
             -- Raised from her own pgml_proxy.upcall_call: the NOTICE looks like the shim's,
             -- so the proxy engages, and its ownership checks must refuse.
             PERFORM pgml_proxy.upcall_call('embed', $1, ARRAY[$2], $3, NULL);
             RETURN NULL;
         END $$;",
    )
    .await
    .expect("mallory's trap");
    let dir = scratch_dir().join("mallory");
    let (_, out, err) = psql_script(
        &through_proxy("mallory", "mallory-pw", "evil"),
        &dir,
        &format!("DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'bait'); END $$;\n"),
    );
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'",
            &[],
        )
        .await
        .expect("mallory's role")
        .get(0);
    assert!(!superuser, "mallory became a superuser");
    let evidence: i64 = evil
        .query_one("SELECT count(*) FROM public.evidence", &[])
        .await
        .expect("evidence")
        .get(0);
    assert_eq!(evidence, 0, "mallory's trigger ran as the service role");
    let answers: i64 = evil
        .query_one("SELECT count(*) FROM pgml_proxy.upcall_answer", &[])
        .await
        .expect("answers")
        .get(0);
    assert_eq!(answers, 0, "nothing was written into mallory's table");
    assert!(
        err.contains("pgml_proxy") && err.contains("mallory") && err.contains("refuses"),
        "the client is told which object and owner were refused:\n{out}\n{err}"
    );
}

#[tokio::test]
async fn install_upgrades_a_version_3_shim_to_the_service_role_and_revokes_public_reads() {
    let admin = connect(&stack().direct_url()).await.expect("direct");
    admin
        .batch_execute("CREATE DATABASE legacy TEMPLATE template0")
        .await
        .expect("database legacy");
    let legacy_url = direct("postgres", "postgres", "legacy");
    let legacy = connect(&legacy_url).await.expect("legacy");
    // What version 3 left behind: superuser-owned objects, answers readable by PUBLIC.
    legacy
        .batch_execute(
            "CREATE SCHEMA pgml; CREATE SCHEMA pgml_proxy;
             COMMENT ON SCHEMA pgml_proxy IS 'pgml-proxy internals (upcall answers, shim helpers); shim version 3';
             GRANT USAGE ON SCHEMA pgml_proxy TO PUBLIC;
             CREATE UNLOGGED TABLE pgml_proxy.upcall_answer (request_id uuid NOT NULL, ord integer NOT NULL,
                 embedding real[], error_sqlstate text, error_message text,
                 created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (request_id, ord));
             GRANT SELECT ON pgml_proxy.upcall_answer TO PUBLIC;
             CREATE FUNCTION pgml_proxy.shim_version() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT '3'::text $$;",
        )
        .await
        .expect("a version 3 install");

    // Through the proxy, the service role may not take it over: the statement fails and the
    // proxy says what to run.
    let through = connect(&through_proxy("postgres", "postgres", "legacy"))
        .await
        .expect("through the proxy");
    let _ = through
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'legacy'); END $$"
        ))
        .await;
    assert!(
        stack()
            .log()
            .contains("install --upstream postgres://ADMIN:PASSWORD@HOST:PORT/legacy"),
        "the proxy's log says how to install: {}",
        stack().log()
    );

    let (ok, out, err) = pgml_integration_tests::run_tool(
        std::process::Command::new(pgml_integration_tests::proxy_bin())
            .args(["install", "--upstream", &legacy_url])
            .env("RUST_LOG", "warn"),
    );
    assert!(ok, "pgml-proxy install failed: {out}\n{err}");
    assert!(
        out.contains("installed, owned by role pgml_proxy_service"),
        "{out}"
    );
    let owners = pgml_integration_tests::shim_owners(&legacy).await;
    assert!(owners.len() > 10, "{owners:?}");
    for (object, owner) in &owners {
        assert_eq!(owner, "pgml_proxy_service", "{object}");
    }
    let public_reads: bool = legacy
        .query_one(
            "SELECT EXISTS (SELECT FROM aclexplode((SELECT relacl FROM pg_class WHERE oid = 'pgml_proxy.upcall_answer'::regclass)) a
                             WHERE a.grantee = 0)",
            &[],
        )
        .await
        .expect("acl")
        .get(0);
    assert!(!public_reads, "PUBLIC keeps no privilege on the answers");
    // Idempotent, and the proxy now serves the database.
    let (ok, out, err) = pgml_integration_tests::run_tool(
        std::process::Command::new(pgml_integration_tests::proxy_bin())
            .args(["install", "--upstream", &legacy_url])
            .env("RUST_LOG", "warn"),
    );
    assert!(ok && out.contains("already installed"), "{out}\n{err}");
    let through = connect(&through_proxy("postgres", "postgres", "legacy"))
        .await
        .expect("through the proxy");
    through
        .batch_execute(&format!(
            "DO $$ BEGIN PERFORM pgml.embed('{DEFAULT_MODEL}', 'legacy'); END $$"
        ))
        .await
        .expect("an upcall in the upgraded database");
}
