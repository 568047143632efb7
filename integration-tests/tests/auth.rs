//! Authentication relayed end to end: SCRAM-SHA-256 with a right and a wrong password, and
//! md5, cleartext password and trust after switching pg_hba.conf lines for dedicated users.

use pgml_integration_tests::{conf_load_time, connect, stack, wait_for_reload};
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn scram_user_with_right_password_connects_and_wrong_one_gets_28p01() {
    let admin = connect(&stack().direct_url()).await.unwrap();
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS scram_user; \
             SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_user LOGIN PASSWORD 'right-pw'",
        )
        .await
        .unwrap();
    let client = connect(&stack().config_for("scram_user", "right-pw"))
        .await
        .expect("right password");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "scram_user");

    let Err(err) = connect(&stack().config_for("scram_user", "wrong-pw")).await else {
        panic!("wrong password must fail");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn md5_cleartext_and_trust_methods_are_relayed() {
    let admin = connect(&stack().direct_url()).await.unwrap();
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS md5_user; DROP ROLE IF EXISTS clear_user; DROP ROLE IF EXISTS trust_user; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw'; \
             SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE clear_user LOGIN PASSWORD 'clear-pw'; \
             CREATE ROLE trust_user LOGIN",
        )
        .await
        .unwrap();
    // Prepend dedicated hba lines (first match wins), keeping the file's other lines. The old
    // contents are read first: COPY TO truncates the file before its query runs. The proxy
    // reaches the embedded Postgres over its Unix socket (`local` lines), psql over TCP.
    let before = conf_load_time(&stack().direct_url());
    admin
        .batch_execute(
            "DO $$ DECLARE f text := current_setting('hba_file'); old text := pg_read_file(f); BEGIN \
               EXECUTE format($q$COPY (SELECT l FROM ( \
                 SELECT l, 0 AS o, n FROM unnest(ARRAY[ \
                   'host all md5_user 127.0.0.1/32 md5', \
                   'host all clear_user 127.0.0.1/32 password', \
                   'host all trust_user 127.0.0.1/32 trust', \
                   'local all md5_user md5', \
                   'local all clear_user password', \
                   'local all trust_user trust']) WITH ORDINALITY AS a(l, n) \
                 UNION ALL \
                 SELECT replace(l, E'\\t', ' '), 1, n \
                   FROM regexp_split_to_table(%L, E'\\n') WITH ORDINALITY AS b(l, n) \
               ) s ORDER BY o, n) TO %L$q$, old, f); \
             END $$; SELECT pg_reload_conf();",
        )
        .await
        .unwrap();
    wait_for_reload(&stack().direct_url(), &before);

    for (user, password) in [
        ("md5_user", "md5-pw"),
        ("clear_user", "clear-pw"),
        ("trust_user", "anything"),
    ] {
        let client = connect(&stack().config_for(user, password))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), user);
    }
    let Err(err) = connect(&stack().config_for("md5_user", "nope")).await else {
        panic!("wrong md5 password must fail");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}
