//! The `pgml-proxy` binary: parses the command line and hands over to the library.

use clap::Parser;
use pgml_proxy::cli::LogFormat;
use pgml_proxy::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    pgml_proxy::config::apply(&args)?;
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        Command::Embed(args) => runtime.block_on(pgml_proxy::commands::embed(args))?,
        Command::Install(args) => runtime.block_on(pgml_proxy::commands::install(args))?,
        Command::Backfill(args) => runtime.block_on(pgml_proxy::commands::backfill(args))?,
        Command::LoadDataset(args) => runtime.block_on(pgml_proxy::commands::load_dataset(args))?,
    }
    Ok(())
}
