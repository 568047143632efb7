//! Command-line interface: `pgml-proxy serve` and its options. Every option can also be set
//! from the environment as `PGML_PROXY_<NAME>`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::net::upstream::SslMode;
use crate::net::url::redact_url;
use crate::session::listener::{PreAuthLimits, SessionLimits};

/// pgml-proxy: a Postgres wire-protocol proxy that serves pgml.embed() for any Postgres.
#[derive(Debug, Parser)]
#[command(name = "pgml-proxy", version, about)]
pub struct Cli {
    /// TOML file with default options (keys are the long option names); flags and
    /// environment variables take precedence over it, and it over pgml-proxy.toml next to
    /// the executable (the settings file `make setup` writes).
    #[arg(long, global = true, env = "PGML_PROXY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, env = "PGML_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (with the session id and statement fields).
    Json,
}

/// Who may reuse a cached embedding (`--cache-scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheScope {
    /// Every session: the fastest, but a call's latency tells whether any session embedded
    /// the same text with the same model before.
    Shared,
    /// Only sessions of the role that computed it (the role the client logged in as).
    Role,
}

/// Subcommands.
// Parsed once at start and moved, never stored in bulk: the size of `serve`'s options does not
// matter, and boxing them would only add noise where they are read.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (in front of --upstream, or of an embedded Postgres when absent).
    Serve(ServeArgs),
    /// Embed texts read from stdin (one JSON string per line); one JSON array per line out.
    Embed(EmbedArgs),
    /// Chunk texts read from stdin (one JSON string per line) as pgml.chunk does; one JSON
    /// array of chunks per line out.
    Chunk(ChunkArgs),
    /// Install or upgrade the pgml shim (schema pgml, PostgresML's signatures) in a database.
    Install(InstallArgs),
    /// Fill a vector column of a table with embeddings, in batches, resumably.
    Backfill(BackfillArgs),
    /// Load a dataset into pgml.<name> (what SELECT * FROM pgml.load_dataset(...) does).
    LoadDataset(LoadDatasetArgs),
    /// Say what this binary finds (ONNX Runtime, models, Postgres, datasets, with --upstream
    /// the database and its shim) and what is missing; exits non-zero when something required is.
    Doctor(DoctorArgs),
}

pub use super::args::{
    BackfillArgs, ChunkArgs, DatasetArgs, DoctorArgs, EmbedArgs, EngineArgs, HubArgs, InstallArgs,
    LoadDatasetArgs, RemoteArgs, DEFAULT_MODEL, EMBEDDED_URL,
};

/// Options of `pgml-proxy serve`. Its `Debug` (what --print-config shows) hides passwords.
#[derive(Clone, Args)]
pub struct ServeArgs {
    /// Address to accept clients on.
    #[arg(long, env = "PGML_PROXY_LISTEN", default_value = "127.0.0.1:6432")]
    pub listen: String,

    /// Upstream Postgres, postgres://HOST:PORT (user and database come from each client).
    /// Without it, an embedded Postgres 16 + pgvector is started.
    #[arg(long, env = "PGML_PROXY_UPSTREAM")]
    pub upstream: Option<String>,

    /// TLS to the upstream, as libpq's sslmode: disable, prefer, require, verify-ca or
    /// verify-full (the last two check the certificate against sslrootcert= in the URL).
    /// Default: the URL's sslmode=, else prefer, as in libpq; when both are given, the
    /// stricter. Unix sockets never use TLS.
    #[arg(long, env = "PGML_PROXY_UPSTREAM_SSLMODE", value_enum)]
    pub upstream_sslmode: Option<SslMode>,

    /// Start even though the upstream lets a role in without asking for a password
    /// (pg_hba.conf `trust`, or `peer`/`ident` as the proxy's own OS user). The proxy relays
    /// each client's authentication and does not authenticate clients itself, so with this
    /// flag every client that can reach --listen logs in as such a role without a password.
    #[arg(long, env = "PGML_PROXY_DANGEROUSLY_ALLOW_PASSWORDLESS_UPSTREAM")]
    pub dangerously_allow_passwordless_upstream: bool,

    /// PEM certificate chain for client TLS (with --tls-key); without it SSLRequest gets 'N'.
    #[arg(long, env = "PGML_PROXY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for client TLS (with --tls-cert).
    #[arg(long, env = "PGML_PROXY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client has from connecting to the end of authentication (Postgres'
    /// authentication_timeout); then its connection is closed.
    #[arg(long, env = "PGML_PROXY_AUTHENTICATION_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub authentication_timeout: u64,

    /// Seconds a client has from connecting to its startup packet (and a CancelRequest to be
    /// forwarded); an idle socket is closed then. At most --authentication-timeout.
    #[arg(long, env = "PGML_PROXY_STARTUP_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub startup_timeout: u64,

    /// Connections not yet authenticated (idle, in the startup or authentication exchange, or
    /// CancelRequests) open at once; more get FATAL 53300 and are closed at once.
    #[arg(long, env = "PGML_PROXY_MAX_UNAUTHENTICATED_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_unauthenticated_connections: u64,

    /// Of those, from one IPv4 address or IPv6 /64 (raise it to the total when all clients
    /// come through one address, as behind a NAT or a load balancer).
    #[arg(long, env = "PGML_PROXY_MAX_UNAUTHENTICATED_PER_SOURCE", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_unauthenticated_per_source: u64,

    /// MiB that client messages buffered whole (all but large COPY data) may take in all
    /// sessions together; a session whose message does not fit ends with FATAL 53200.
    #[arg(long, env = "PGML_PROXY_CLIENT_BUFFER_BUDGET_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_buffer_budget_mb: u64,

    /// Client sessions served at once; more get FATAL 53300 too_many_connections.
    #[arg(long, env = "PGML_PROXY_MAX_CONNECTIONS", default_value_t = 100)]
    pub max_connections: usize,

    /// Threads that relay client sessions, each running its sessions on a single-threaded
    /// runtime; default: one per CPU the process may run on. 0 runs them on the shared
    /// multi-threaded runtime instead.
    #[arg(long, env = "PGML_PROXY_RELAY_THREADS")]
    pub relay_threads: Option<usize>,

    /// `on`: pin relay thread i to the i-th CPU the process may run on (when there is one
    /// thread per allowed CPU, the default) and give each new connection to the thread on the
    /// CPU its packets arrive on (SO_INCOMING_CPU), so that a session's reads, handling and
    /// writes stay on the CPU its client talks through. `off`: sessions are dealt round-robin
    /// and the OS places the threads.
    #[arg(long, env = "PGML_PROXY_RELAY_PINNING", default_value = "on", value_parser = ["on", "off"])]
    pub relay_pinning: String,

    /// `on`: each relay thread gets a relay core, a thread with an epoll loop of its own
    /// beside it (on the same CPU when pinned): a session that has relayed 64 statements in a
    /// row without needing more than the lean path (no pgml call, no Parse, nothing the proxy
    /// rewrites) is lent to the core and relayed there without the async runtime, until a
    /// message needs the full path. TLS sessions stay on their relay thread. `off`: sessions
    /// stay on their relay thread. Needs relay threads (not `--relay-threads 0`).
    #[arg(long, env = "PGML_PROXY_RELAY_CORE", default_value = "on", value_parser = ["on", "off"])]
    pub relay_core: String,

    /// Seconds sessions may run on after SIGINT/SIGTERM; then they end with FATAL 57P01.
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

    /// Embedded Postgres: the superuser `postgres`'s password, set at each start (default
    /// `postgres`). Required when --listen is not a loopback address.
    #[arg(long, env = "PGML_PROXY_EMBEDDED_PASSWORD")]
    pub embedded_password: Option<String>,

    /// Credentials the proxy uses for its side connections (upcall answers, shim install):
    /// postgres://USER:PASSWORD@HOST:PORT/DB (the database is replaced per session). The
    /// embedded Postgres configures it itself. Without it, calls inside functions, triggers
    /// and DO blocks fail with a clear error; constant and prefetched calls still work.
    #[arg(long, env = "PGML_PROXY_SERVICE_URL")]
    pub service_url: Option<String>,

    /// Milliseconds the upstream shim waits for an upcall answer.
    #[arg(long, env = "PGML_PROXY_UPCALL_TIMEOUT_MS", default_value_t = 60_000)]
    pub upcall_timeout_ms: u64,

    /// Most service connections open at once (one per database, plus shim installs); an
    /// upcall in a further database fails with 53300 until one is idle for 5 minutes.
    #[arg(long, env = "PGML_PROXY_SERVICE_CONNECTIONS_MAX", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub service_connections_max: u64,

    /// Who may reuse a cached embedding: `shared` (every session) or `role` (only sessions
    /// of the role that computed it, so that timing reveals nothing across roles).
    #[arg(long, env = "PGML_PROXY_CACHE_SCOPE", value_enum, default_value_t = CacheScope::Shared)]
    pub cache_scope: CacheScope,

    /// Models to load at start (comma-separated), so the first query is not slow.
    #[arg(long, env = "PGML_PROXY_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,

    /// Remote model servers for pgml.embed and pgml.transform.
    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Where pgml.load_dataset may read local files.
    #[command(flatten)]
    pub datasets: DatasetArgs,

    /// Address for Prometheus /metrics, /healthz and /readyz (off when absent).
    #[arg(long, env = "PGML_PROXY_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Embedding engine options.
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Print the effective settings (after flags, environment and config file) and exit.
    #[arg(long, hide = true)]
    pub print_config: bool,

    /// Shut down when stdin reaches end of file (for test harnesses that own the process).
    #[arg(long, env = "PGML_PROXY_EXIT_ON_STDIN_EOF", hide = true)]
    pub exit_on_stdin_eof: bool,
}

impl ServeArgs {
    /// The limits on what one client may cost the proxy.
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            authentication_timeout: Duration::from_secs(self.authentication_timeout),
            startup_timeout: Duration::from_secs(self.startup_timeout),
            pre_auth: PreAuthLimits {
                total: usize::try_from(self.max_unauthenticated_connections).unwrap_or(usize::MAX),
                per_source: usize::try_from(self.max_unauthenticated_per_source)
                    .unwrap_or(usize::MAX),
            },
            client_buffer_budget: usize::try_from(self.client_buffer_budget_mb)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024 * 1024),
        }
    }
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeArgs")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream.as_deref().map(redact_url))
            .field("upstream_sslmode", &self.upstream_sslmode)
            .field(
                "dangerously_allow_passwordless_upstream",
                &self.dangerously_allow_passwordless_upstream,
            )
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("authentication_timeout", &self.authentication_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field(
                "max_unauthenticated_connections",
                &self.max_unauthenticated_connections,
            )
            .field(
                "max_unauthenticated_per_source",
                &self.max_unauthenticated_per_source,
            )
            .field("client_buffer_budget_mb", &self.client_buffer_budget_mb)
            .field("max_connections", &self.max_connections)
            .field("relay_threads", &self.relay_threads)
            .field("relay_pinning", &self.relay_pinning)
            .field("relay_core", &self.relay_core)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("data_dir", &self.data_dir)
            .field("pg_dir", &self.pg_dir)
            .field("embedded_port", &self.embedded_port)
            .field(
                "embedded_password",
                &self.embedded_password.as_ref().map(|_| "***"),
            )
            .field("service_url", &self.service_url.as_deref().map(redact_url))
            .field("upcall_timeout_ms", &self.upcall_timeout_ms)
            .field("service_connections_max", &self.service_connections_max)
            .field("cache_scope", &self.cache_scope)
            .field("preload", &self.preload)
            .field("remote", &self.remote)
            .field("datasets", &self.datasets)
            .field("metrics_addr", &self.metrics_addr)
            .field("engine", &self.engine)
            .field("print_config", &self.print_config)
            .field("exit_on_stdin_eof", &self.exit_on_stdin_eof)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_token_and_route_passwords_stay_out_of_the_logged_settings() {
        let cli = Cli::try_parse_from([
            "pgml-proxy",
            "serve",
            "--remote-model",
            "meta-llama/*=http://llm:pw-in-url@vllm:8000/v1",
            "--remote-token",
            "sk-secret-token",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let logged = format!("{args:?}");
        assert!(!logged.contains("sk-secret-token"), "{logged}");
        assert!(!logged.contains("pw-in-url"), "{logged}");
        assert!(logged.contains("meta-llama/*="), "{logged}");
        let generate = args.remote.generate_config();
        assert_eq!(generate.token.as_deref(), Some("sk-secret-token"));
        assert_eq!(generate.timeout, Duration::from_secs(300));
        let embed = args.remote.embed_config();
        assert_eq!(embed.token.as_deref(), Some("sk-secret-token"));
        assert_eq!(embed.timeout, pgml_engine::RemoteConfig::default().timeout);
    }

    #[test]
    fn serve_defaults_and_flags_parse() {
        let cli = Cli::try_parse_from(["pgml-proxy", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(args.listen, "127.0.0.1:6432");
        assert_eq!(args.embedded_port, 6433);
        assert!(args.upstream.is_none());
        assert_eq!(
            args.upstream_sslmode, None,
            "the URL's, else libpq's default"
        );
        assert!(!args.dangerously_allow_passwordless_upstream);

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
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(args.upstream_sslmode, Some(SslMode::Require));
        assert_eq!(args.max_connections, 5);

        assert!(Cli::try_parse_from(["pgml-proxy", "serve", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["pgml-proxy", "serve", "--upstream-sslmode", "allow"]).is_err()
        );
    }

    #[test]
    fn limits_parse_and_the_printed_config_hides_passwords() {
        let cli = Cli::try_parse_from([
            "pgml-proxy",
            "serve",
            "--upstream",
            "postgres://app:s3cret@db:5432/x",
            "--service-url",
            "postgres://svc:hunter2@db/x?password=again",
            "--remote-model",
            "m=tei+http://u:tok@host:80",
            "--authentication-timeout",
            "5",
            "--client-buffer-budget-mb",
            "64",
            "--startup-timeout",
            "2",
            "--max-unauthenticated-connections",
            "40",
            "--max-unauthenticated-per-source",
            "4",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let limits = args.session_limits();
        assert_eq!(limits.authentication_timeout, Duration::from_secs(5));
        assert_eq!(limits.client_buffer_budget, 64 << 20);
        assert_eq!(limits.startup_timeout, Duration::from_secs(2));
        assert_eq!(
            limits.pre_auth,
            PreAuthLimits {
                total: 40,
                per_source: 4
            }
        );
        let printed = format!("{args:#?}");
        for secret in ["s3cret", "hunter2", "again", "tok@"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("postgres://app:***@db:5432/x"),
            "{printed}"
        );
        assert!(
            Cli::try_parse_from(["pgml-proxy", "serve", "--authentication-timeout", "0"]).is_err()
        );
    }
}
