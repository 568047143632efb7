//! Option precedence, end to end through the binary: flag > environment > config file > default.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

fn effective(args: &[&str], env: &[(&str, &str)], file: Option<&str>) -> String {
    let dir = std::env::temp_dir().join(format!("pgml-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgml-proxy"));
    cmd.env_clear();
    if let Some(text) = file {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(&path);
    }
    cmd.arg("serve").arg("--print-config").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let file =
        Some("listen = \"127.0.0.1:7001\"\nmax-connections = 11\nupcall-timeout-ms = 1234\n");
    let default = effective(&[], &[], None);
    assert!(default.contains("\"127.0.0.1:6432\""), "{default}");
    assert!(default.contains("max_connections: 100"), "{default}");

    let from_file = effective(&[], &[], file);
    assert!(from_file.contains("\"127.0.0.1:7001\""), "{from_file}");
    assert!(from_file.contains("max_connections: 11"), "{from_file}");
    assert!(from_file.contains("upcall_timeout_ms: 1234"), "{from_file}");

    let env = [("PGML_PROXY_LISTEN", "127.0.0.1:7002")];
    let from_env = effective(&[], &env, file);
    assert!(from_env.contains("\"127.0.0.1:7002\""), "{from_env}");
    assert!(from_env.contains("max_connections: 11"), "{from_env}");

    let from_flag = effective(&["--listen", "127.0.0.1:7003"], &env, file);
    assert!(from_flag.contains("\"127.0.0.1:7003\""), "{from_flag}");
}

#[test]
fn malformed_config_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("pgml-proxy-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "listen = [1, 2]").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgml-proxy"))
        .env_clear()
        .arg("--config")
        .arg(&path)
        .args(["serve", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}
