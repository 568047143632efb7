//! PostgresML's own SDK, korvus 1.1.5 (pinned in requirements.txt), runs its documented
//! quickstart unchanged through the proxy: a pipeline with a recursive_character splitter,
//! semantic search (the local default model) and full-text search, upsert_documents,
//! vector_search with and without rerank (the cross-encoder `make setup` lays out), search and
//! archive. The script (integration-tests/clients/korvus_quickstart.py) checks what korvus
//! stored and returned; this test runs it and fails with its output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use pgml_integration_tests::{run_tool, stack, venv_python, workspace_dir};

#[test]
fn korvus_quickstart_runs_unchanged_through_the_proxy() {
    let python = venv_python();
    let script = workspace_dir().join("integration-tests/clients/korvus_quickstart.py");
    let (ok, out, err) = run_tool(
        Command::new(&python)
            .arg(&script)
            .env("KORVUS_DATABASE_URL", stack().url())
            .env("KORVUS_RERANK_MODEL", "aegis/policy-nli-cross-encoder")
            .env("RUST_LOG", "warn"),
    );
    assert!(ok, "korvus quickstart failed:\n{out}\n{err}");
    assert!(out.contains("rerank"), "the rerank step ran:\n{out}");
}
