//! `pgml-proxy doctor`: says what this binary finds (settings file, ONNX Runtime and its
//! execution providers, the models in the hub cache, the Postgres binaries, the datasets, and
//! with `--upstream` the database, the connected role, pgvector and the shim; the
//! `--remote-model` servers in `remote_routes`), what is missing, and the command that fixes
//! it. Only reads: it installs, downloads and starts nothing.

mod precision;
mod remote_routes;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::app::args::{DoctorArgs, DEFAULT_MODEL};
use crate::app::config::{config_path, settings_file};
use crate::error::Result;
use crate::intercept::shim::{SHIM_VERSION, VERSION_QUERY};
use crate::net::url::redact_url;

/// How long the upstream check may take (two connections and a few queries).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// What one check found.
enum Status {
    /// Found and usable.
    Ok,
    /// Usable, but worth knowing (optional part absent).
    Note,
    /// Required and missing or broken: doctor exits non-zero.
    Missing,
}

/// The report, built line by line.
#[derive(Default)]
struct Report {
    text: String,
    problems: usize,
}

impl Report {
    fn line(&mut self, label: &str, status: Status, detail: &str) {
        let word = match status {
            Status::Ok => "ok",
            Status::Note => "note",
            Status::Missing => {
                self.problems += 1;
                "MISSING"
            }
        };
        let _ = writeln!(self.text, "{label:<14}{word:<9}{detail}");
    }

    fn more(&mut self, detail: &str) {
        let _ = writeln!(self.text, "{:<23}{detail}", "");
    }
}

/// Runs every check and prints the report on stdout; true when nothing required is missing.
pub async fn doctor(args: DoctorArgs) -> Result<bool> {
    let mut report = Report::default();
    let _ = writeln!(
        report.text,
        "pgml-proxy {} doctor",
        env!("CARGO_PKG_VERSION")
    );
    settings(&mut report);
    runtime(&mut report, &args);
    models(&mut report, &args);
    postgres(&mut report, &args);
    datasets(&mut report, &args.datasets.datasets_dir);
    remote_routes::remote_routes(&mut report, &args.remote).await;
    if let Some(url) = &args.upstream {
        upstream(&mut report, url).await;
    }
    match report.problems {
        0 => report
            .text
            .push_str("\neverything pgml-proxy needs was found\n"),
        n => {
            let _ = writeln!(
                report.text,
                "\n{n} problem(s): see the MISSING lines and the fix under each"
            );
        }
    }
    print!("{}", report.text);
    Ok(report.problems == 0)
}

fn settings(report: &mut Report) {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(path) = config_path(&args) {
        report.line("config file", Status::Ok, &path.display().to_string());
    }
    match settings_file() {
        Some(path) if path.is_file() => {
            report.line("settings", Status::Ok, &path.display().to_string());
        }
        Some(path) => {
            report.line(
                "settings",
                Status::Note,
                &format!(
                    "no {} (paths come from flags and the environment only)",
                    path.display()
                ),
            );
            report.more("fix: `make setup` in the pgml-proxy checkout writes it");
        }
        None => report.line(
            "settings",
            Status::Note,
            "cannot tell where this executable is",
        ),
    }
}

fn runtime(report: &mut Report, args: &DoctorArgs) {
    match pgml_engine::describe_runtime(args.ort_dylib.as_deref()) {
        Ok(info) => {
            report.line(
                "ONNX Runtime",
                Status::Ok,
                &format!(
                    "version {} from {} ({})",
                    info.version,
                    info.path.display(),
                    info.origin
                ),
            );
            let cuda_in_ort = info.providers.contains(&"CUDAExecutionProvider");
            report.line(
                "providers",
                Status::Ok,
                &format!(
                    "{} (compiled into this ONNX Runtime)",
                    info.providers.join(", ")
                ),
            );
            let cuda = match (cuda_in_ort, info.cuda_feature) {
                (true, true) => "usable: device \"cuda\" and the default on a machine with a GPU",
                (true, false) => {
                    "ONNX Runtime has it, but this pgml-proxy was built without the `cuda` \
                     cargo feature"
                }
                (false, true) => {
                    "this pgml-proxy has the `cuda` feature, but this ONNX Runtime has no CUDA \
                     provider (install onnxruntime-gpu's library)"
                }
                (false, false) => "not available (CPU only)",
            };
            report.line("CUDA", Status::Note, cuda);
        }
        Err(e) => {
            report.line("ONNX Runtime", Status::Missing, &e.to_string());
        }
    }
}

fn models(report: &mut Report, args: &DoctorArgs) {
    let hub = args.hub.dir_or_default();
    let models = pgml_engine::cached_models(&hub);
    if models.is_empty() {
        report.line(
            "models",
            Status::Missing,
            &format!("no models in the Hugging Face cache at {}", hub.display()),
        );
        report.more(
            "fix: `make setup` (lays out the default model), or set --hf-home / HF_HOME to the \
             cache that holds your models",
        );
        return;
    }
    let default_there = models.iter().any(|m| m == DEFAULT_MODEL);
    report.line(
        "models",
        if default_there {
            Status::Ok
        } else {
            Status::Note
        },
        &format!(
            "{} in the Hugging Face cache at {}",
            models.len(),
            hub.display()
        ),
    );
    let mut refused = Vec::new();
    for model in &models {
        let tag = if model == DEFAULT_MODEL {
            " (the default model)"
        } else {
            ""
        };
        let (precision, problem) = precision::precision(&hub, model, &args.precision);
        report.more(&format!("{model}{tag}: {precision}"));
        if problem {
            refused.push(model.clone());
        }
    }
    if !refused.is_empty() {
        report.line(
            "precision",
            Status::Missing,
            &format!(
                "--int8 names {} but the fidelity guard refuses int8 for it: its pgml.embed \
                 calls fail",
                refused.join(", ")
            ),
        );
        report.more(
            "fix: `make setup` (lays the default model's int8 file and its record), \
             --int8-fallback (compute refused models in fp32), or drop them from --int8",
        );
    }
    if !default_there {
        report.more(&format!(
            "the default model {DEFAULT_MODEL} is not there: `make setup` lays it out"
        ));
    }
}

/// `bin/NAME --version` of a Postgres installation, first line.
fn tool_version(bin: &Path, name: &str) -> std::result::Result<String, String> {
    let out = std::process::Command::new(bin.join(name))
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", bin.join(name).display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(line) if out.status.success() => Ok(line.trim().to_string()),
        _ => Err(format!(
            "{} --version failed: {}",
            bin.join(name).display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn postgres(report: &mut Report, args: &DoctorArgs) {
    // Without --upstream the proxy runs its embedded Postgres, which needs these binaries.
    let required = args.upstream.is_none();
    let absent = if required {
        Status::Missing
    } else {
        Status::Note
    };
    let Some(pg_dir) = &args.pg_dir else {
        report.line(
            "Postgres",
            absent,
            "no --pg-dir / PGML_PROXY_PG_DIR: `serve` without --upstream cannot start its \
             embedded Postgres",
        );
        report.more("fix: `make setup` (installs Postgres 16 + pgvector into .venv)");
        return;
    };
    let bin = pg_dir.join("bin");
    match (tool_version(&bin, "postgres"), tool_version(&bin, "initdb")) {
        (Ok(postgres), Ok(initdb)) => {
            let vector = ["lib/postgresql/vector.so", "lib/vector.so"]
                .iter()
                .any(|lib| pg_dir.join(lib).is_file());
            report.line(
                "Postgres",
                Status::Ok,
                &format!("{}: {postgres}; {initdb}", bin.display()),
            );
            if vector {
                report.line("pgvector", Status::Ok, "vector.so installed");
            } else {
                report.line(
                    "pgvector",
                    absent,
                    &format!("no vector.so in {}/lib", pg_dir.display()),
                );
            }
        }
        (postgres, initdb) => {
            let why: Vec<String> = [postgres, initdb]
                .into_iter()
                .filter_map(|r| r.err())
                .collect();
            report.line("Postgres", absent, &why.join("; "));
            report.more("fix: `make setup`, or --pg-dir / PGML_PROXY_PG_DIR naming a Postgres 16 installation with pgvector");
        }
    }
}

fn datasets(report: &mut Report, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        report.line(
            "datasets",
            Status::Note,
            &format!(
                "no directory {} (pgml.load_dataset reads bundled datasets from --datasets-dir / PGML_PROXY_DATASETS_DIR; `make setup` records the checkout's datasets/)",
                dir.display()
            ),
        );
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type()
                .ok()?
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    report.line(
        "datasets",
        Status::Ok,
        &format!("{}: {}", dir.display(), names.join(", ")),
    );
}

async fn upstream(report: &mut Report, url: &str) {
    let shown = redact_url(url);
    let checked = tokio::time::timeout(UPSTREAM_TIMEOUT, upstream_facts(url)).await;
    let facts = match checked {
        Ok(Ok(facts)) => facts,
        Ok(Err(e)) => {
            report.line("upstream", Status::Missing, &e.to_string());
            report.more("fix: check the URL (postgres://USER:PASSWORD@HOST:PORT/DB) and that the server is up");
            return;
        }
        Err(_) => {
            report.line(
                "upstream",
                Status::Missing,
                &format!("{shown}: no answer within {UPSTREAM_TIMEOUT:?}"),
            );
            return;
        }
    };
    report.line(
        "upstream",
        Status::Ok,
        &format!("{shown}: {}", facts.version),
    );
    let who = &facts.installer;
    if who.superuser {
        report.line(
            "role",
            Status::Ok,
            &format!("{} (`pgml-proxy install` can run as it)", who.describe()),
        );
    } else if who.createrole && who.create_on_database {
        report.line(
            "role",
            Status::Ok,
            &format!(
                "{} (`pgml-proxy install` can run as it, as on a managed Postgres)",
                who.describe()
            ),
        );
    } else {
        report.line("role", Status::Note, &who.describe());
        report.more(&format!(
            "`pgml-proxy install` needs a superuser, or a CREATEROLE role that owns database {} \
             (on RDS, Cloud SQL, Supabase and Neon: the admin role the provider created); \
             relayed sessions need neither",
            who.database
        ));
    }
    match (&who.vector_schema, &who.vector_available) {
        (Some(schema), _) => report.line(
            "pgvector",
            Status::Ok,
            &format!(
                "extension vector {} in schema {schema}",
                facts.vector_version.as_deref().unwrap_or("")
            ),
        ),
        (None, Some(available)) => {
            report.line(
                "pgvector",
                Status::Note,
                &format!(
                    "extension vector {available} is available but not created in database {} \
                     (pgml.embed returns real[], but ::vector columns and indexes need it)",
                    who.database
                ),
            );
            report.more(&format!(
                "fix: {}",
                crate::app::service_role::create_vector_hint(&who.database)
            ));
        }
        (None, None) => report.line(
            "pgvector",
            Status::Missing,
            "extension vector is not available on this server (pgml.embed returns real[], \
             but ::vector columns and indexes need it)",
        ),
    }
    match facts.transaction_pooler {
        Some(true) => {
            report.line(
                "pooler",
                Status::Note,
                "transaction-mode pooler: consecutive transactions of one client ran on different \
                 backends. pgml-proxy keeps nothing in a session (no startup parameters, temp \
                 tables or named statements of its own), so every pgml.* call works through it",
            );
            report.more(
                "clients' own named prepared statements need a pooler that tracks them (PgBouncer \
                 1.21+ max_prepared_statements) or must be turned off (psycopg \
                 prepare_threshold=None, pgjdbc prepareThreshold=0, asyncpg \
                 statement_cache_size=0); session state (SET, LISTEN, advisory locks, temp \
                 tables) does not outlive a transaction there, as without the proxy",
            );
        }
        Some(false) => report.line(
            "pooler",
            Status::Ok,
            "no transaction-mode pooler seen (consecutive transactions kept their backend): \
             direct, or a session-mode pooler",
        ),
        None => report.line(
            "pooler",
            Status::Note,
            "could not tell whether a transaction-mode pooler sits in between (a second \
             connection was refused); pgml-proxy works either way",
        ),
    }
    match facts.shim {
        Some(v) if v == SHIM_VERSION => report.line(
            "shim",
            Status::Ok,
            &format!("pgml shim version {v} (this binary's)"),
        ),
        Some(v) => report.line(
            "shim",
            Status::Note,
            &format!(
                "pgml shim version {v}; this binary installs version {SHIM_VERSION} (`pgml-proxy install --upstream ...` or the proxy's first session upgrades it)"
            ),
        ),
        None => report.line(
            "shim",
            Status::Note,
            &format!(
                "not installed in this database (`pgml-proxy install --upstream {shown}` as an admin, or the proxy installs version {SHIM_VERSION} on first use where its service role may)"
            ),
        ),
    }
}

struct UpstreamFacts {
    version: String,
    /// The installed version of extension vector, when it is created in this database.
    vector_version: Option<String>,
    installer: crate::app::service_role::Installer,
    shim: Option<String>,
    /// Whether a transaction-mode pooler sits in between (None: could not tell).
    transaction_pooler: Option<bool>,
}

async fn upstream_facts(url: &str) -> Result<UpstreamFacts> {
    let client = crate::app::commands::connect(url).await?;
    let pg = |e: tokio_postgres::Error| {
        crate::error::ProxyError::Config(crate::intercept::shim::pg_error(&e))
    };
    // Unnamed statements only: through a transaction-mode pooler, a named statement prepared
    // in one transaction may be missing (or another client's) in the next.
    let version: String = client
        .query_typed_one("SELECT pg_catalog.version()", &[])
        .await
        .map_err(pg)?
        .get(0);
    let vector_version: Option<String> = client
        .query_typed_opt(
            "SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'vector'",
            &[],
        )
        .await
        .map_err(pg)?
        .map(|row| row.get(0));
    let installer = crate::app::service_role::installer(&client)
        .await
        .map_err(crate::error::ProxyError::Config)?;
    let shim: Option<String> = client
        .query_typed_one(VERSION_QUERY, &[])
        .await
        .map_err(pg)?
        .get(0);
    let transaction_pooler = transaction_pooler(&client, url).await.ok();
    Ok(UpstreamFacts {
        version,
        vector_version,
        installer,
        shim,
        transaction_pooler,
    })
}

/// Whether consecutive transactions of one client may run on different backends: between two
/// transactions of `client`, a second connection holds a transaction open, then `client` runs
/// a few more. Directly or through a session-mode pooler, `client` keeps its backend and the
/// other never has it; a transaction-mode pooler hands the backend `client` just released to
/// the other (PgBouncer by default reuses the last released first), or hands `client` another
/// one (in turn, with `server_round_robin`).
async fn transaction_pooler(client: &tokio_postgres::Client, url: &str) -> Result<bool> {
    const PID: &str = "SELECT pg_catalog.pg_backend_pid()";
    async fn pid(c: &tokio_postgres::Client) -> std::result::Result<i32, tokio_postgres::Error> {
        Ok(c.query_typed_one(PID, &[]).await?.get(0))
    }
    let pg = |e: tokio_postgres::Error| {
        crate::error::ProxyError::Config(crate::intercept::shim::pg_error(&e))
    };
    let other = crate::app::commands::connect(url).await?;
    let first = pid(client).await.map_err(pg)?;
    other.batch_execute("BEGIN").await.map_err(pg)?;
    let held = pid(&other).await.map_err(pg)?;
    let mut moved = pid(client).await.map_err(pg)? != first;
    other.batch_execute("COMMIT").await.map_err(pg)?;
    for _ in 0..4 {
        moved |= pid(client).await.map_err(pg)? != first;
    }
    Ok(held == first || moved)
}
