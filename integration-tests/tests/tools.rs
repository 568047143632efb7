//! psql and pgbench through the proxy: a psql script with DDL, \copy both ways, a
//! multi-statement string, an error's SQLSTATE and a rolled-back transaction; pgbench in
//! simple, extended and prepared modes with no failed transactions.

use std::fs;
use std::process::Command;

use pgml_integration_tests::{pg_tool, run_tool, scratch_dir, stack};

#[test]
fn psql_script_with_ddl_copy_errors_and_rollback() {
    let dir = scratch_dir().join("psql");
    fs::create_dir_all(&dir).unwrap();
    let input: String = (1..=100).map(|i| format!("{i},name {i}\n")).collect();
    fs::write(dir.join("in.csv"), &input).unwrap();
    let script = r#"
CREATE TABLE psql_items (id int PRIMARY KEY, name text);
\copy psql_items FROM 'in.csv' WITH (FORMAT csv)
SELECT count(*) AS n FROM psql_items \gset
\echo count=:n
\copy (SELECT id, name FROM psql_items ORDER BY id) TO 'out.csv' WITH (FORMAT csv)
SELECT 'multi-' || 1 \; SELECT 'multi-' || 2 \; SELECT 'multi-' || 3;
INSERT INTO psql_items VALUES (1, 'duplicate');
\echo sqlstate=:LAST_ERROR_SQLSTATE
BEGIN;
INSERT INTO psql_items VALUES (1000, 'rolled back');
ROLLBACK;
SELECT count(*) AS n2 FROM psql_items \gset
\echo after_rollback=:n2
DROP TABLE psql_items;
"#;
    fs::write(dir.join("script.sql"), script).unwrap();
    let (_, out, err) = run_tool(
        Command::new(pg_tool("psql"))
            .current_dir(&dir)
            .args(["-X", "-A", "-t", "-f", "script.sql"])
            .arg(stack().url()),
    );
    assert!(out.contains("count=100"), "{out}\n{err}");
    for n in 1..=3 {
        assert!(out.contains(&format!("multi-{n}")), "{out}\n{err}");
    }
    assert!(out.contains("sqlstate=23505"), "{out}\n{err}");
    assert!(out.contains("after_rollback=100"), "{out}\n{err}");
    assert!(err.contains("duplicate key value"), "{err}");
    assert_eq!(fs::read_to_string(dir.join("out.csv")).unwrap(), input);
}

#[test]
fn pgbench_select_only_in_every_protocol_mode_has_no_failures() {
    let url = stack().url();
    let (ok, out, err) = run_tool(
        Command::new(pg_tool("pgbench"))
            .args(["-i", "-s", "1", "-q"])
            .arg(&url),
    );
    assert!(ok, "pgbench -i failed: {out}\n{err}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run_tool(
            Command::new(pg_tool("pgbench"))
                .args(["-S", "-c", "4", "-j", "2", "-t", "300", "-M", mode])
                .arg(&url),
        );
        assert!(ok, "pgbench -M {mode} failed: {out}\n{err}");
        assert!(
            out.contains("number of transactions actually processed: 1200/1200"),
            "-M {mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 "),
            "-M {mode}: {out}"
        );
    }
}
