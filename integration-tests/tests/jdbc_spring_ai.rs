//! Spring AI's `PostgresMlEmbeddingModel` statements through pgjdbc (Debian's
//! libpostgresql-jdbc-java, installed by `make setup`): `CREATE EXTENSION IF NOT EXISTS pgml` /
//! `vector` (afterPropertiesSet), the single `SELECT pgml.embed(?, ?, ?::JSONB)` and the batch
//! `... FROM (SELECT unnest(?) AS text) AS texts`, each with and without `::vector`, executed
//! past pgjdbc's prepareThreshold so both its unnamed and its named (server-prepared) statements
//! are used. Every vector must equal the engine's own; the batch form must be prefetched, never
//! upcalled. The program is integration-tests/clients/SpringAiStatements.java, compiled here with
//! javac. Nothing else in this binary may upcall (the upcall counter is checked).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use pgml_integration_tests::{
    engine_embed, max_abs_diff, run_tool, scratch_dir, stack, workspace_dir, DEFAULT_MODEL,
};
use serde_json::Value;

/// pgjdbc's jar: $PGJDBC_JAR, else Debian's.
fn pgjdbc_jar() -> PathBuf {
    let jar = std::env::var("PGJDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/share/java/postgresql.jar"));
    assert!(
        jar.is_file(),
        "pgjdbc not found at {}: the JDBC client test needs Debian's libpostgresql-jdbc-java \
         (`make setup` as root installs it; otherwise `sudo apt-get install -y \
         libpostgresql-jdbc-java`), or set PGJDBC_JAR to a pgjdbc jar",
        jar.display()
    );
    jar
}

/// What one run of `SpringAiStatements test` printed: its JSON lines, and the upcall counter
/// before and after it.
struct Run {
    lines: Vec<Value>,
    upcalls_before: f64,
    upcalls_after: f64,
    stderr: String,
}

/// Compiles and runs the Java program once for the whole binary.
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let jar = pgjdbc_jar();
        let classes = scratch_dir().join("java");
        std::fs::create_dir_all(&classes).unwrap();
        let source = workspace_dir().join("integration-tests/clients/SpringAiStatements.java");
        let javac = Command::new("javac")
            .args(["-encoding", "UTF-8", "-d"])
            .arg(&classes)
            .arg(&source)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run javac ({e}): the JDBC client test needs a JDK 17+ on PATH (e.g. apt-get install default-jdk-headless)")
            });
        assert!(
            javac.status.success(),
            "javac failed:\n{}",
            String::from_utf8_lossy(&javac.stderr)
        );
        let proxy = stack();
        let upcalls_before = proxy.metric("pgml_proxy_upcalls_total");
        let url = format!(
            "jdbc:postgresql://127.0.0.1:{}/postgres?user=postgres&password=postgres",
            proxy.port
        );
        let classpath = format!("{}:{}", classes.display(), jar.display());
        let (_, out, stderr) = run_tool(
            Command::new("java")
                .args(["-cp", &classpath, "SpringAiStatements", "test", &url])
                .arg(DEFAULT_MODEL),
        );
        let upcalls_after = proxy.metric("pgml_proxy_upcalls_total");
        eprintln!("SpringAiStatements stderr:\n{stderr}");
        let lines = out
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:.200}"))
            })
            .collect();
        Run {
            lines,
            upcalls_before,
            upcalls_after,
            stderr,
        }
    })
}

/// The errors the program reported for calls (not for the CREATE EXTENSION steps).
fn call_errors(run: &Run) -> Vec<String> {
    run.lines
        .iter()
        .filter_map(|l| l.get("error").filter(|_| l.get("step").is_none()))
        .map(|e| e.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Checks every vector of `form` with `cast` against the engine's embedding of its text.
fn check_form(form: &str, cast: &str, rounds: u64) {
    let run = run();
    let errors = call_errors(run);
    assert!(
        errors.is_empty(),
        "calls failed: {errors:#?}\nstderr:\n{}",
        run.stderr
    );
    let rows: Vec<&Value> = run
        .lines
        .iter()
        .filter(|l| l["form"] == form && l["cast"] == cast)
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let got: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| serde_json::from_value(r["embedding"].clone()).unwrap())
        .collect();
    let seen_rounds = rows.iter().filter_map(|r| r["round"].as_u64()).max();
    assert_eq!(
        seen_rounds,
        Some(rounds - 1),
        "{form}{cast}: every round answered"
    );
    let want = engine_embed(DEFAULT_MODEL, "{}", &texts);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let diff = max_abs_diff(g, w);
        assert!(
            diff <= 1e-6,
            "{form}{cast}: {:?} differs from the engine by {diff}",
            texts[i]
        );
    }
}

/// The program's rounds per form (SpringAiStatements.ROUNDS): past pgjdbc's prepareThreshold 5.
const ROUNDS: u64 = 7;

#[test]
fn create_extension_pgml_and_vector_succeed() {
    let run = run();
    let steps: Vec<&Value> = run
        .lines
        .iter()
        .filter(|l| l.get("step").is_some())
        .collect();
    assert_eq!(steps.len(), 2, "two afterPropertiesSet steps: {steps:?}");
    for step in steps {
        assert!(
            step["ok"] == true,
            "Spring AI's afterPropertiesSet step {} failed through the proxy: SQLSTATE {} {}",
            step["step"],
            step["sqlstate"],
            step["error"]
        );
    }
}

#[test]
fn single_statement_vectors_equal_the_engine() {
    check_form("single", "", ROUNDS);
    check_form("single", "::vector", ROUNDS);
}

#[test]
fn batch_statement_vectors_equal_the_engine_without_upcalls() {
    check_form("batch", "", ROUNDS);
    check_form("batch", "::vector", ROUNDS);
    let run = run();
    assert_eq!(
        run.upcalls_after - run.upcalls_before,
        0.0,
        "the Spring AI statements were served by the upcall path instead of the prefetch"
    );
    assert_eq!(
        run.upcalls_after, 0.0,
        "something in this binary used the upcall path"
    );
    // Past the threshold pgjdbc switched each batch statement to a named server-prepared one:
    // the session holds them (Postgres lists only named statements, never the unnamed one).
    let prepared = run
        .lines
        .iter()
        .find(|l| l.get("prepared").is_some())
        .expect("the program listed pg_prepared_statements");
    let statements: Vec<&str> = prepared["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let named_batches = statements.iter().filter(|s| s.contains("unnest(")).count();
    assert_eq!(
        named_batches, 2,
        "pgjdbc's named (server-prepared) batch statements, with and without ::vector: {statements:#?}"
    );
}
