//! A checkout below a directory the Postgres account cannot enter (root's 0700 home, a
//! `mktemp -d`): the proxy, as root, runs the embedded Postgres from a copy of the installation
//! and keeps the cluster in /var/lib/pgml-proxy behind a link, without loosening anything.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgml_integration_tests::{connect, free_port, required_env, Proxy};

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("creating a directory of the copy");
    for entry in fs::read_dir(src).expect("reading the installation") {
        let entry = entry.expect("a directory entry");
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            let target = fs::read_link(&from).expect("read_link");
            std::os::unix::fs::symlink(target, &to).expect("symlink");
        } else if kind.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copying a file of the installation");
        }
    }
}

fn start(pg_dir: &Path, data_dir: &Path) -> Proxy {
    let pg_port = free_port();
    let mut proxy = Proxy::spawn(
        "private",
        &[
            "--pg-dir",
            pg_dir.to_str().expect("utf-8 path"),
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--embedded-port",
            &pg_port.to_string(),
            "--shutdown-timeout",
            "2",
            "--offline",
        ],
    );
    proxy.pg_port = Some(pg_port);
    proxy
}

fn stop(proxy: &Proxy) {
    proxy.begin_shutdown();
    let status = proxy.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn embedded_postgres_starts_from_a_checkout_in_a_private_directory() {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        eprintln!(
            "skipped: only root runs Postgres as another account (this test runs as uid {})",
            std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
        );
        return;
    }
    // 0700, like root's home or a `mktemp -d`.
    let home = tempfile::Builder::new()
        .prefix("pgml-proxy-private-")
        .tempdir()
        .expect("a private directory");
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    // The installation as `make setup` lays it out: <site-packages>/<package>/pginstall, and
    // the wheel's libraries in <site-packages>/<package>.libs (found by an $ORIGIN RPATH).
    let checkout = home.path().join("clone");
    let source = PathBuf::from(required_env("PGML_PROXY_PG_DIR"));
    let package = source.parent().expect("the installation's package");
    let site = checkout.join(".venv/lib/site-packages");
    let package_name = package.file_name().expect("a package name");
    let pg_dir = site.join(package_name).join("pginstall");
    copy_tree(&source, &pg_dir);
    let mut libs = package_name.to_owned();
    libs.push(".libs");
    let source_libs = package.parent().expect("site-packages").join(&libs);
    if source_libs.is_dir() {
        copy_tree(&source_libs, &site.join(&libs));
    }
    let data_dir = checkout.join(".cache/pgdata");

    let proxy = start(&pg_dir, &data_dir);
    let client = connect(&proxy.config_for("postgres", "postgres"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let distance: f64 = client
        .query_one(
            "SELECT ('[1,2,3]'::vector <-> '[1,2,5]'::vector)::float8",
            &[],
        )
        .await
        .expect("a pgvector query")
        .get(0);
    assert_eq!(distance, 2.0);
    client
        .batch_execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')")
        .await
        .expect("writing to the cluster");
    drop(client);
    let log = proxy.log();
    assert!(
        log.contains("Postgres runs from a copy in /var/lib/pgml-proxy/pginstall-"),
        "{log}"
    );
    assert!(
        log.contains("the cluster lives in /var/lib/pgml-proxy/pgdata-"),
        "{log}"
    );
    stop(&proxy);

    let placed = fs::read_link(&data_dir).expect("the data dir is a link to where it lives");
    assert!(placed.starts_with("/var/lib/pgml-proxy"), "{placed:?}");
    assert!(placed.join("PG_VERSION").is_file());
    // Nothing of the user's was opened up.
    assert_eq!(
        fs::metadata(home.path()).expect("stat").mode() & 0o777,
        0o700
    );

    // A second start follows the link to the same cluster.
    let again = start(&pg_dir, &data_dir);
    let client = connect(&again.config_for("postgres", "postgres"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", again.log()));
    let note: String = client
        .query_one("SELECT note FROM kept", &[])
        .await
        .expect("the table written by the first start")
        .get(0);
    assert_eq!(note, "still here");
    drop(client);
    stop(&again);
    fs::remove_dir_all(&placed).expect("removing the cluster");
    let _ = fs::remove_file(placed.with_extension("log"));
}
