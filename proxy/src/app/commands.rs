//! The small subcommands: `embed` (texts on stdin, vectors on stdout) and `install` (the
//! upstream shim into one database).

use crate::app::cli::{BackfillArgs, ChunkArgs, EmbedArgs, InstallArgs, LoadDatasetArgs};
use crate::error::{ProxyError, Result};
use crate::net::upstream::{postgres_config, SslMode};
use crate::net::url::redact_url;

/// `pgml-proxy embed`: one JSON string per input line, one JSON array per output line.
pub async fn embed(args: EmbedArgs) -> Result<()> {
    let engine =
        pgml_engine::Engine::new(args.engine.engine_config()).map_err(ProxyError::Engine)?;
    let kwargs: serde_json::Value = serde_json::from_str(&args.kwargs)
        .map_err(|e| ProxyError::Config(format!("--kwargs is not valid JSON: {e}")))?;
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let stdout = tokio::io::stdout();
    pgml_engine::embed_json_lines(&engine, &args.model, &kwargs, stdin, stdout)
        .await
        .map(|_| ())
        .map_err(ProxyError::Engine)
}

/// `pgml-proxy chunk`: one JSON string per stdin line in, its chunks (a JSON array) out, as
/// pgml.chunk computes them; a line that is not a JSON string, or a text the splitter refuses,
/// ends the command with the error and the line number.
pub fn chunk(args: ChunkArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let kwargs: serde_json::Value = serde_json::from_str(&args.kwargs)
        .map_err(|e| ProxyError::Config(format!("--kwargs is not valid JSON: {e}")))?;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lines().enumerate() {
        let line = line?;
        let text: String = serde_json::from_str(&line)
            .map_err(|e| ProxyError::Config(format!("line {}: not a JSON string: {e}", n + 1)))?;
        let chunks = pgml_chunk::chunk(&args.splitter, &text, &kwargs)?;
        let json = serde_json::to_string(&chunks)
            .map_err(|e| ProxyError::Internal(format!("encoding chunks: {e}")))?;
        writeln!(out, "{json}")?;
    }
    out.flush()?;
    Ok(())
}

/// `pgml-proxy install`: with an administrator's connection to one database (a superuser,
/// or a CREATEROLE admin that owns it, as managed Postgres services give), creates the
/// least-privilege service role (password from $PGML_PROXY_SERVICE_PASSWORD, else generated
/// and printed once) or reuses a clean one, hands it the shim's objects and installs or
/// upgrades the shim as it, in one transaction. `--dry-run` prints that transaction instead.
pub async fn install(args: InstallArgs) -> Result<()> {
    use crate::app::service_role;

    let (client, task) = service_role::connect_pinned(&args.upstream)
        .await
        .map_err(|e| {
            ProxyError::Config(format!(
                "cannot connect to {}: {e}",
                redact_url(&args.upstream)
            ))
        })?;
    let password = std::env::var("PGML_PROXY_SERVICE_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let failed = |e: String| ProxyError::Config(format!("installing the shim: {e}"));
    if args.dry_run {
        let plan = service_role::dry_run(&client, password.as_deref(), true)
            .await
            .map_err(failed)?;
        drop(client);
        let _ = task.await;
        let who = &plan.installer;
        println!(
            "-- pgml-proxy install --dry-run: what install would run in database {} as {}; \
             nothing was changed",
            who.database,
            who.describe()
        );
        match &who.vector_schema {
            Some(schema) => println!("-- pgvector: extension vector in schema {schema}"),
            None => println!("-- pgvector: not in this database yet; the plan creates it"),
        }
        print!("{}", plan.script());
        return Ok(());
    }
    let done = service_role::install(&client, password.as_deref(), true)
        .await
        .map_err(failed)?;
    drop(client);
    let _ = task.await;
    let version = crate::intercept::shim::SHIM_VERSION;
    let role = crate::intercept::shim::SERVICE_ROLE;
    if done.installed {
        println!("pgml shim version {version} installed, owned by role {role}");
    } else {
        println!("pgml shim version {version} already installed, owned by role {role}");
    }
    match (&done.vector_schema, done.created_vector) {
        (Some(schema), true) => println!("pgvector: created extension vector in schema {schema}"),
        (Some(schema), false) => println!("pgvector: extension vector in schema {schema}"),
        (None, _) => {}
    }
    if let Some(generated) = done.generated_password {
        println!(
            "created role {role} with password {generated} (shown once): start the proxy with \
             --service-url postgres://{role}:{generated}@HOST:PORT"
        );
    }
    Ok(())
}

/// Connects with the TLS settings the URL asks for (`sslmode=`, `sslrootcert=`), as relayed
/// sessions get them.
pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (config, tls) = postgres_config(url, SslMode::Disable)?;
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        ProxyError::Config(format!(
            "cannot connect to {}: {}",
            redact_url(url),
            crate::intercept::shim::pg_error(&e)
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "connection closed");
        }
    });
    Ok(client)
}

/// `pgml-proxy load-dataset`: the same load as `SELECT * FROM pgml.load_dataset(...)`.
pub async fn load_dataset(args: LoadDatasetArgs) -> Result<()> {
    let client = connect(&args.upstream).await?;
    let kwargs: serde_json::Value = serde_json::from_str(&args.kwargs)
        .map_err(|e| ProxyError::Config(format!("--kwargs is not valid JSON: {e}")))?;
    let config = args
        .datasets
        .settings(args.allow_downloads, &args.hub)
        .config();
    let (table, rows) = pgml_bulk::load_dataset(
        &client,
        &args.source,
        args.subset.as_deref(),
        args.limit,
        &kwargs,
        &config,
    )
    .await
    .map_err(ProxyError::Bulk)?;
    println!("loaded {rows} rows into pgml.{table}");
    Ok(())
}

/// `pgml-proxy backfill`: fills a vector column batch by batch; Ctrl-C finishes the batches
/// in flight and stops (run it again to resume).
pub async fn backfill(args: BackfillArgs) -> Result<()> {
    use std::io::IsTerminal;

    let engine = std::sync::Arc::new(
        pgml_engine::Engine::new(args.engine.engine_config()).map_err(ProxyError::Engine)?,
    );
    let mut options =
        pgml_bulk::BackfillOptions::new(&args.table, &args.column, &args.text, &args.model);
    options.kwargs = serde_json::from_str(&args.kwargs)
        .map_err(|e| ProxyError::Config(format!("--kwargs is not valid JSON: {e}")))?;
    options.key = args.key.clone();
    options.batch_size = args.batch_size;
    options.concurrency = args.concurrency;
    options.lists = args.lists;
    options.create_index = args
        .create_index
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: pgml_bulk::BulkError| ProxyError::Config(e.to_string()))?;
    let (config, tls) = postgres_config(&args.upstream, SslMode::Disable)?;
    let cancel = pgml_bulk::CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the batches in flight (run again to resume)");
            on_signal.cancel();
        }
    });
    let terminal = std::io::stderr().is_terminal();
    let last_line = std::sync::Mutex::new(std::time::Instant::now());
    let on_progress = move |p: &pgml_bulk::Progress| {
        let eta = p
            .eta()
            .map(|d| format!("{}s", d.as_secs()))
            .unwrap_or_else(|| "?".into());
        let line = format!(
            "{}/{} rows  {:.0} rows/s  ETA {eta}",
            p.done,
            p.total,
            p.rows_per_second()
        );
        if terminal {
            let width = 30usize;
            let filled = if p.total == 0 {
                width
            } else {
                (p.done as usize * width / p.total as usize).min(width)
            };
            eprint!(
                "\r[{}{}] {line}   ",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
        } else if let Ok(mut last) = last_line.lock() {
            if last.elapsed() >= std::time::Duration::from_secs(5) || p.done >= p.total {
                eprintln!("backfill: {line}");
                *last = std::time::Instant::now();
            }
        }
    };
    let report = pgml_bulk::backfill(&config, tls, engine, &options, on_progress, cancel)
        .await
        .map_err(ProxyError::Bulk)?;
    if terminal {
        eprintln!();
    }
    let p = &report.progress;
    println!(
        "backfill {}: {} rows embedded ({} dims) in {:.1}s, {:.0} rows/s{}",
        if report.cancelled { "stopped" } else { "done" },
        p.done,
        report.dimension,
        p.elapsed.as_secs_f64(),
        p.rows_per_second(),
        report
            .index_sql
            .as_deref()
            .map(|s| format!("; {s}"))
            .unwrap_or_default()
    );
    Ok(())
}
