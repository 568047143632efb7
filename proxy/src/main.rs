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
    // Inference runs on the engine's own threads; the relay is cheaper with fewer workers on a
    // small machine (measured on 2 cores: fewer context switches per pgbench transaction).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if cores <= 2 { 1 } else { cores })
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
