//! The README's commands as a user types them after `make setup`, from a shell that exported
//! nothing (only PATH and HOME) and outside the checkout: `doctor`, `embed`, `install` and
//! `serve --upstream` then a pgml.embed query through it. The binary finds ONNX Runtime, the
//! models, Postgres and the datasets through the settings file `make setup` wrote next to it.
//! And a copy of the binary without that file says what it looked for and what to run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pgml_integration_tests::{
    connect, engine_embed, free_port, in_fresh_shell, max_abs_diff, proxy_bin, scratch_dir, stack,
    Proxy, DEFAULT_MODEL,
};

/// Runs the proxy binary `bin` with `args` from a fresh shell plus `env`, `stdin` as input.
fn run(bin: &PathBuf, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(bin);
    in_fresh_shell(&mut cmd)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A binary copied a moment ago may still be open for writing in a child forked meanwhile
    // by another test's thread (ETXTBSY) until that child execs: try again shortly.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            spawned => break spawned.expect("spawning pgml-proxy"),
        }
    };
    // A command that fails before reading its input closes the pipe: that is its answer.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    child.wait_with_output().expect("pgml-proxy output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The settings file `make setup` writes next to the binary; the README's promise rests on it.
fn settings_file() -> PathBuf {
    let file = proxy_bin().with_file_name("pgml-proxy.toml");
    assert!(
        file.is_file(),
        "{} is missing: run `make setup` (it writes the settings file next to the binary)",
        file.display()
    );
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_commands_work_from_a_shell_that_exported_nothing() {
    settings_file();
    let bin = proxy_bin();

    // doctor: everything found, plain text.
    let out = run(&bin, &["doctor"], &[], "");
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    assert!(report.contains("ONNX Runtime  ok"), "{report}");
    assert!(report.contains("CPUExecutionProvider"), "{report}");
    assert!(
        report.contains(&format!("{DEFAULT_MODEL} (the default model)")),
        "{report}"
    );
    assert!(report.contains("postgres (PostgreSQL) 16"), "{report}");
    assert!(report.contains("reviews_sample"), "{report}");
    assert!(!report.contains("MISSING"), "{report}");

    // embed: the same vector as the test environment's engine gives.
    let out = run(&bin, &["embed"], &[], "\"passage: hi mom\"\n");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes off a terminal: {stderr:?}"
    );
    let line = text(&out.stdout);
    let vector: Vec<f32> = serde_json::from_str(line.trim()).expect("one JSON array");
    let expected = engine_embed(DEFAULT_MODEL, "{}", &["passage: hi mom"]);
    assert_eq!(vector.len(), 384);
    assert_eq!(max_abs_diff(&vector, &expected[0]), 0.0);

    // An uncached model: said once, with the cache from the settings file and the fix.
    let out = run(
        &bin,
        &["embed", "--model", "nobody/no-such-model"],
        &[],
        "\"x\"\n",
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("huggingface-cli download nobody/no-such-model --cache-dir"),
        "{stderr}"
    );
    assert!(stderr.contains("downloads are disabled"), "{stderr}");
    assert!(stderr.contains("(revision main)"), "{stderr}");
    assert_eq!(
        stderr.matches("onnx/model_quantized.onnx").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("invalid configuration"), "{stderr}");

    // install into a database without the shim, then serve in front of it.
    let pg_port = stack().pg_port.expect("the stack has an embedded Postgres");
    let admin = connect(&format!(
        "host=127.0.0.1 port={pg_port} user=postgres password=postgres dbname=postgres"
    ))
    .await
    .expect("direct connection");
    for sql in [
        "DROP DATABASE IF EXISTS fresh_shell",
        "CREATE DATABASE fresh_shell TEMPLATE template0",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    let db_url = format!("postgres://postgres:postgres@127.0.0.1:{pg_port}/fresh_shell");
    let out = run(&bin, &["install", "--upstream", &db_url], &[], "");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("pgml shim version"), "{stdout}");
    assert!(stdout.contains(" installed, owned by role"), "{stdout}");

    let out = run(&bin, &["doctor", "--upstream", &db_url], &[], "");
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("PostgreSQL 16"), "{report}");
    assert!(report.contains("(this binary's)"), "{report}");

    let proxy = Proxy::spawn_in_fresh_shell(
        "fresh-shell",
        &["--upstream", &format!("postgres://127.0.0.1:{pg_port}")],
    );
    let client = connect(&format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=fresh_shell",
        proxy.port
    ))
    .await
    .expect("connecting through the fresh-shell proxy");
    let row = client
        .query_one(
            &format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'passage: hi mom')"),
            &[],
        )
        .await
        .expect("pgml.embed through the proxy");
    let served: Vec<f32> = row.get(0);
    assert_eq!(max_abs_diff(&served, &expected[0]), 0.0);
    drop(client);
    proxy.begin_shutdown();
    assert!(proxy.wait_exit(Duration::from_secs(30)).is_some());
    let log = proxy.log();
    assert!(log.contains("pgml-proxy ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    admin
        .batch_execute("DROP DATABASE fresh_shell")
        .await
        .expect("dropping fresh_shell");
}

#[test]
fn without_settings_a_missing_onnx_runtime_names_the_path_and_make_setup() {
    // A copy of the binary with no settings file beside it: a binary before `make setup`.
    let dir = scratch_dir().join("bare");
    std::fs::create_dir_all(&dir).unwrap();
    let bare = dir.join("pgml-proxy");
    std::fs::copy(proxy_bin(), &bare).expect("copying the binary");
    assert!(!dir.join("pgml-proxy.toml").exists());

    let out = run(&bare, &["embed"], &[], "\"x\"\n");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot load libonnxruntime.so"), "{stderr}");
    assert!(
        stderr.contains("neither --ort-dylib nor ORT_DYLIB_PATH is set"),
        "{stderr}"
    );
    assert!(stderr.contains("make setup"), "{stderr}");

    let missing = "/nonexistent/onnxruntime/libonnxruntime.so";
    let out = run(&bare, &["embed"], &[("ORT_DYLIB_PATH", missing)], "\"x\"\n");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot load {missing}")),
        "{stderr}"
    );
    assert!(stderr.contains("make setup"), "{stderr}");

    let out = run(&bare, &["doctor"], &[], "");
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("ONNX Runtime  MISSING"), "{report}");
    assert!(report.contains("Postgres      MISSING"), "{report}");
    assert!(report.contains("`make setup`"), "{report}");
    assert!(report.contains("pgml-proxy.toml"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_upstream_finds_postgres_through_the_settings_file() {
    settings_file();
    // `make run`'s `pgml-proxy serve`, on a private data directory and free ports so that it
    // cannot meet a `make run` of this checkout.
    let data_dir = scratch_dir().join("fresh-embedded-pgdata");
    let pg_port = free_port().to_string();
    let proxy = Proxy::spawn_in_fresh_shell(
        "fresh-embedded",
        &[
            "--data-dir",
            data_dir.to_str().expect("utf-8 temp dir"),
            "--embedded-port",
            &pg_port,
            "--shutdown-timeout",
            "2",
        ],
    );
    let client = connect(&proxy.config_for("postgres", "postgres"))
        .await
        .expect("connecting through the embedded proxy");
    let row = client
        .query_one(
            &format!("SELECT pgml.embed('{DEFAULT_MODEL}', 'passage: ' || 'hi mom')"),
            &[],
        )
        .await
        .expect("pgml.embed through the embedded proxy");
    let served: Vec<f32> = row.get(0);
    let expected = engine_embed(DEFAULT_MODEL, "{}", &["passage: hi mom"]);
    assert_eq!(max_abs_diff(&served, &expected[0]), 0.0);
    drop(client);
    proxy.begin_shutdown();
    assert!(proxy.wait_exit(Duration::from_secs(60)).is_some());
    assert!(data_dir.join("PG_VERSION").is_file());
}
