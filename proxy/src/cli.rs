//! Command-line interface: `pgml-proxy serve` and its options. Every option can also be set
//! from the environment as `PGML_PROXY_<NAME>`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::upstream::SslMode;

/// pgml-proxy: a Postgres wire-protocol proxy that serves pgml.embed() for any Postgres.
#[derive(Debug, Parser)]
#[command(name = "pgml-proxy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (in front of --upstream, or of an embedded Postgres when absent).
    Serve(ServeArgs),
}

/// Options of `pgml-proxy serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to accept clients on.
    #[arg(long, env = "PGML_PROXY_LISTEN", default_value = "127.0.0.1:6432")]
    pub listen: String,

    /// Upstream Postgres, postgres://HOST:PORT (user and database come from each client).
    /// Without it, an embedded Postgres 16 + pgvector is started.
    #[arg(long, env = "PGML_PROXY_UPSTREAM")]
    pub upstream: Option<String>,

    /// TLS to the upstream: disable, prefer or require (the certificate is not verified).
    #[arg(long, env = "PGML_PROXY_UPSTREAM_SSLMODE", value_enum, default_value_t = SslMode::Disable)]
    pub upstream_sslmode: SslMode,

    /// PEM certificate chain for client TLS (with --tls-key); without it SSLRequest gets 'N'.
    #[arg(long, env = "PGML_PROXY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for client TLS (with --tls-cert).
    #[arg(long, env = "PGML_PROXY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Client sessions served at once; more get FATAL 53300 too_many_connections.
    #[arg(long, env = "PGML_PROXY_MAX_CONNECTIONS", default_value_t = 100)]
    pub max_connections: usize,

    /// Seconds sessions may run on after SIGINT/SIGTERM before they are closed.
    #[arg(long, env = "PGML_PROXY_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,

    /// Embedded Postgres: data directory (created on first start, reused afterwards).
    #[arg(long, env = "PGML_PROXY_DATA_DIR", default_value = ".cache/pgdata")]
    pub data_dir: PathBuf,

    /// Embedded Postgres: installation with bin/initdb and bin/postgres (and pgvector).
    #[arg(long, env = "PGML_PROXY_PG_DIR")]
    pub pg_dir: Option<PathBuf>,

    /// Embedded Postgres: private port on 127.0.0.1 (0 picks a free one).
    #[arg(long, env = "PGML_PROXY_EMBEDDED_PORT", default_value_t = 6433)]
    pub embedded_port: u16,

    /// Shut down when stdin reaches end of file (for test harnesses that own the process).
    #[arg(long, env = "PGML_PROXY_EXIT_ON_STDIN_EOF", hide = true)]
    pub exit_on_stdin_eof: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_defaults_and_flags_parse() {
        let cli = Cli::try_parse_from(["pgml-proxy", "serve"]).unwrap();
        let Command::Serve(args) = cli.command;
        assert_eq!(args.listen, "127.0.0.1:6432");
        assert_eq!(args.embedded_port, 6433);
        assert!(args.upstream.is_none());

        let cli = Cli::try_parse_from([
            "pgml-proxy",
            "serve",
            "--upstream",
            "postgres://db:5432",
            "--upstream-sslmode",
            "require",
            "--max-connections",
            "5",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command;
        assert_eq!(args.upstream_sslmode, SslMode::Require);
        assert_eq!(args.max_connections, 5);

        assert!(Cli::try_parse_from(["pgml-proxy", "serve", "--tls-cert", "c.pem"]).is_err());
    }
}
