//! `CREATE EXTENSION pgml` and `DROP EXTENSION pgml` through the proxy answer as Postgres
//! answers them for an extension (command tags, NOTICE or ERROR with the same text and
//! SQLSTATE, transaction state), in the simple and the extended protocol, and really install
//! or remove the shim; only a superuser or a member of the service role may remove it. Its
//! own test binary: it removes the shim from the shared database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgml_integration_tests::{connect, psql_script, scratch_dir, stack};

fn psql(name: &str, script: &str) -> (String, String) {
    let (_, out, err) = psql_script(&stack().url(), &scratch_dir().join(name), script);
    (out, err)
}

fn shim_functions() -> String {
    let (out, _) = psql(
        "count",
        "SELECT count(*) FROM pg_proc WHERE proname IN ('embed', 'chunk', 'rank') AND pronamespace = 'pgml'::regnamespace;\n",
    );
    out.trim().to_owned()
}

#[tokio::test]
async fn create_and_drop_extension_answer_like_postgres_and_do_the_work() {
    // The embedded stack installed the shim at start: it exists.
    let (out, err) = psql(
        "exists",
        "CREATE EXTENSION IF NOT EXISTS pgml;\nCREATE EXTENSION pgml;\nCREATE EXTENSION pgml WITH SCHEMA public;\n",
    );
    assert_eq!(
        out.lines().filter(|l| *l == "CREATE EXTENSION").count(),
        1,
        "{out}"
    );
    assert!(
        err.contains("NOTICE:  extension \"pgml\" already exists, skipping"),
        "{err}"
    );
    assert!(
        err.contains("ERROR:  extension \"pgml\" already exists"),
        "{err}"
    );
    assert!(
        err.contains("must be installed in schema \"pgml\""),
        "{err}"
    );
    assert!(shim_functions().starts_with('4'), "embed (2), chunk, rank");

    // An ordinary role may not remove the shim for everyone (the service role would do it).
    let admin = connect(&stack().url()).await.unwrap();
    admin
        .batch_execute("DROP ROLE IF EXISTS ce_app; CREATE ROLE ce_app LOGIN PASSWORD 'ce_app'")
        .await
        .unwrap();
    let app = connect(&stack().config_for("ce_app", "ce_app"))
        .await
        .unwrap();
    let err = app
        .batch_execute("DROP EXTENSION pgml")
        .await
        .expect_err("an ordinary role cannot drop it");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert_eq!(db.message(), "must be owner of extension pgml");
    let err = app
        .execute("DROP EXTENSION IF EXISTS pgml", &[])
        .await
        .expect_err("nor in the extended protocol");
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    assert!(shim_functions().starts_with('4'), "the shim is still there");

    let (out, err) = psql(
        "drop",
        "DROP EXTENSION pgml;\nDROP EXTENSION IF EXISTS pgml;\nDROP EXTENSION pgml;\n",
    );
    assert_eq!(
        out.lines().filter(|l| *l == "DROP EXTENSION").count(),
        2,
        "{out}\n{err}"
    );
    assert!(
        err.contains("NOTICE:  extension \"pgml\" does not exist, skipping"),
        "{err}"
    );
    assert!(
        err.contains("ERROR:  extension \"pgml\" does not exist"),
        "{err}"
    );
    assert_eq!(shim_functions(), "0", "the shim's functions are gone");

    // The extended protocol (what pgjdbc sends for Statement.execute): CREATE installs it.
    let client = connect(&stack().url()).await.unwrap();
    let n = client
        .execute("CREATE EXTENSION IF NOT EXISTS pgml", &[])
        .await
        .expect("CREATE EXTENSION IF NOT EXISTS pgml, extended protocol");
    assert_eq!(n, 0);
    assert_eq!(shim_functions(), "4");
    let version: String = client
        .query_one("SELECT pgml.version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("2.10.0"), "{version}");

    // Inside a transaction the error aborts it, as Postgres' own would.
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .execute("CREATE EXTENSION pgml", &[])
        .await
        .expect_err("already exists");
    assert_eq!(err.as_db_error().unwrap().code().code(), "42710");
    let err = client.execute("SELECT 1", &[]).await.expect_err("aborted");
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
