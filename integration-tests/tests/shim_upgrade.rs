//! Upgrades from every earlier shim version the service role owned (4 to 9, as those versions
//! installed it: integration-tests/fixtures/): `pgml-proxy install` brings each database to
//! the current version, removes what the old versions relied on (the session temp table's
//! lookups, the startup-parameter check, version 9's pgml.transform stub), and the proxy then
//! serves the planned path and the upcall path there, pgml.transform's included. Version 3 (superuser-owned) is covered by hostile_privileges.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use pgml_integration_tests::{
    connect, engine_embed, proxy_bin, run_tool, stack, workspace_dir, DEFAULT_MODEL,
};
use tokio_postgres::SimpleQueryMessage;

fn url(port: u16, database: &str) -> String {
    format!("postgres://postgres:postgres@127.0.0.1:{port}/{database}")
}

fn first_value(messages: &[SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn install_upgrades_every_service_role_owned_shim_version() {
    let stack = stack();
    let pg_port = stack.pg_port.unwrap();
    let admin = connect(&stack.direct_url()).await.unwrap();
    let text = "an upgraded shim serves this";
    let expected = engine_embed(DEFAULT_MODEL, "{}", &[text]).remove(0);
    for version in 4..=10 {
        let database = format!("shim_v{version}");
        for statement in [
            format!("DROP DATABASE IF EXISTS {database}"),
            format!("CREATE DATABASE {database} TEMPLATE template0"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        let old = std::fs::read_to_string(
            workspace_dir().join(format!("integration-tests/fixtures/shim-v{version}.sql")),
        )
        .unwrap();
        let db = connect(&url(pg_port, &database)).await.unwrap();
        // As that version's install left it: schemas and objects owned by the service role.
        db.batch_execute(&format!(
            "CREATE EXTENSION vector;
             CREATE SCHEMA pgml AUTHORIZATION pgml_proxy_service;
             CREATE SCHEMA pgml_proxy AUTHORIZATION pgml_proxy_service;
             BEGIN; SET LOCAL ROLE pgml_proxy_service; SET LOCAL client_min_messages = warning;
             {old}
             COMMIT;"
        ))
        .await
        .unwrap_or_else(|e| panic!("installing version {version}: {e:?}"));
        let installed = first_value(
            &db.simple_query("SELECT pgml_proxy.shim_version()")
                .await
                .unwrap(),
        );
        assert_eq!(installed, version.to_string());

        let (ok, out, err) = run_tool(Command::new(proxy_bin()).args([
            "install",
            "--upstream",
            &url(pg_port, &database),
        ]));
        assert!(ok, "upgrading version {version}: {out}\n{err}");
        assert!(out.contains("version 11 installed"), "{version}: {out}");
        let left = first_value(
            &db.simple_query(
                "SELECT pgml_proxy.shim_version() || ' ' || count(*) FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'pgml_proxy'
                    AND p.proname IN ('prefetch_lookup', 'prefetch_chunks', 'prefetch_clear',
                                      'require_proxy_session', 'answer_ready',
                                      'transform_unsupported')",
            )
            .await
            .unwrap(),
        );
        assert_eq!(
            left, "11 0",
            "version {version}: what version 11 no longer uses is gone"
        );

        // Through the proxy: a planned statement and an upcall from a DO block.
        let through = connect(&format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname={database}",
            stack.port
        ))
        .await
        .unwrap();
        through
            .batch_execute(&format!(
                "CREATE TABLE docs (body text, emb real[]); INSERT INTO docs VALUES ('{text}');
                 DO $$ BEGIN UPDATE docs SET emb = pgml.embed('{DEFAULT_MODEL}', body); END $$;"
            ))
            .await
            .unwrap_or_else(|e| panic!("version {version}: upcall: {e:?}"));
        let rows = through
            .query(
                &format!("SELECT emb, pgml.embed('{DEFAULT_MODEL}', body) FROM docs"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("version {version}: planned: {e:?}"));
        assert_eq!(rows[0].get::<_, Vec<f32>>(0), expected, "version {version}");
        assert_eq!(rows[0].get::<_, Vec<f32>>(1), expected, "version {version}");
        // pgml.transform is the upcall now (no stub's 0A000): this proxy routes no model, so
        // it says how to route one. The jsonb[] overload is new in version 10.
        for sql in [
            "SELECT pgml.transform('text-generation', inputs => ARRAY['hi'])",
            "SELECT pgml.transform('conversational', inputs => ARRAY['{\"role\": \"user\", \"content\": \"hi\"}'::jsonb])",
        ] {
            let err = through.simple_query(sql).await.expect_err(sql);
            let db = err.as_db_error().expect("a database error");
            assert_eq!(db.code().code(), "42704", "version {version}: {}", db.message());
            assert!(db.message().contains("--remote-model"), "{}", db.message());
        }
    }
}
