//! The `pgml-proxy` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use pgml_proxy::app::cli::LogFormat;
use pgml_proxy::Command;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // The message once: each error's text already says what its cause said (anyhow's
        // `Caused by:` list would repeat it).
        Err(e) => {
            eprintln!("pgml-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; false when it ran but found a problem (doctor).
fn run() -> anyhow::Result<bool> {
    let cli = pgml_proxy::app::config::parse_cli(std::env::args_os().collect())?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    // Colour only for a person at a terminal: logs piped to a file or a collector stay plain
    // text (NO_COLOR, https://no-color.org, turns it off at a terminal too).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // One worker per core (TOKIO_WORKER_THREADS overrides). One worker on 2 cores cut context
    // switches per pgbench transaction but lowered throughput (0.35/0.41 vs 0.42/0.50 of direct).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(pgml_proxy::serve(args))?,
        Command::Embed(args) => runtime.block_on(pgml_proxy::app::commands::embed(args))?,
        Command::Chunk(args) => pgml_proxy::app::commands::chunk(args)?,
        Command::Install(args) => runtime.block_on(pgml_proxy::app::commands::install(args))?,
        Command::Backfill(args) => runtime.block_on(pgml_proxy::app::commands::backfill(args))?,
        Command::LoadDataset(args) => {
            runtime.block_on(pgml_proxy::app::commands::load_dataset(args))?
        }
        Command::Doctor(args) => {
            return Ok(runtime.block_on(pgml_proxy::app::doctor::doctor(args))?)
        }
    }
    Ok(true)
}
