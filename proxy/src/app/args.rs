//! The options of the subcommands other than `serve` (`embed`, `install`, `backfill`,
//! `load-dataset`) and the engine options they share with it. Every option can also be set
//! from the environment as `PGML_PROXY_<NAME>`.

use std::path::PathBuf;

use clap::Args;

use crate::intercept::load_dataset::DatasetSettings;

/// The embedded Postgres' superuser URL with the default settings of `make run`.
pub const EMBEDDED_URL: &str = "postgres://postgres:postgres@127.0.0.1:6433/postgres";

/// Options of `pgml-proxy backfill`.
#[derive(Clone, Debug, Args)]
pub struct BackfillArgs {
    /// Table to fill (optionally schema-qualified).
    #[arg(long)]
    pub table: String,
    /// Vector column to fill (created as vector(dim) when absent).
    #[arg(long)]
    pub column: String,
    /// SQL expression over the table's columns giving the text to embed.
    #[arg(long)]
    pub text: String,
    /// Model: a Hugging Face repo id or a local directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// pgml.embed kwargs, a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Unique, ordered key column for keyset pagination.
    #[arg(long, default_value = "id")]
    pub key: String,
    /// Rows per batch (one engine call, one write, one commit).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Build an index CONCURRENTLY at the end: ivfflat or hnsw.
    #[arg(long)]
    pub create_index: Option<String>,
    /// ivfflat lists (default from the row count).
    #[arg(long)]
    pub lists: Option<u32>,
    /// Database to fill, with credentials (default: the embedded Postgres of `make run`).
    #[arg(long, env = "PGML_PROXY_DATABASE_URL", default_value = EMBEDDED_URL)]
    pub upstream: String,
    /// Embedding engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Options of `pgml-proxy load-dataset`.
#[derive(Clone, Debug, Args)]
pub struct LoadDatasetArgs {
    /// Dataset: a bundled name (reviews_sample), a Hugging Face dataset id, or a local path.
    pub source: String,
    /// Subset (configuration) name.
    #[arg(long)]
    pub subset: Option<String>,
    /// Most rows to load.
    #[arg(long)]
    pub limit: Option<i64>,
    /// kwargs, a JSON object (split, revision).
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Where local datasets may be read from.
    #[command(flatten)]
    pub datasets: DatasetArgs,
    /// Download datasets missing from the hub cache.
    #[arg(long, env = "PGML_PROXY_ALLOW_DOWNLOADS")]
    pub allow_downloads: bool,
    /// Where the Hugging Face cache is.
    #[command(flatten)]
    pub hub: HubArgs,
    /// Database to load into, with credentials (default: the embedded Postgres of `make run`).
    #[arg(long, env = "PGML_PROXY_DATABASE_URL", default_value = EMBEDDED_URL)]
    pub upstream: String,
}

/// The default model: laid into the hub cache by `make setup`, offline.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Where the Hugging Face cache is (models and datasets), as huggingface_hub finds it.
#[derive(Clone, Debug, Args)]
pub struct HubArgs {
    /// Hugging Face home: the hub cache is its hub/ folder (`make setup`: .cache/huggingface).
    #[arg(long, env = "HF_HOME")]
    pub hf_home: Option<PathBuf>,

    /// The hub cache itself; wins over --hf-home (default ~/.cache/huggingface/hub).
    #[arg(long, env = "HF_HUB_CACHE")]
    pub hub_cache: Option<PathBuf>,
}

impl HubArgs {
    /// The hub cache directory these options name, if they name one.
    pub fn dir(&self) -> Option<PathBuf> {
        self.hub_cache
            .clone()
            .or_else(|| self.hf_home.as_ref().map(|home| home.join("hub")))
    }

    /// The hub cache directory used: these options', else the engine's default.
    pub fn dir_or_default(&self) -> PathBuf {
        self.dir().unwrap_or_else(pgml_engine::hub_dir_from_env)
    }
}

/// Embedding engine options, shared by the subcommands that embed.
#[derive(Clone, Debug, Args)]
pub struct EngineArgs {
    /// The ONNX Runtime library (libonnxruntime.so) to load; `make setup` records the one it
    /// installs in the settings file next to the binary.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,

    /// Where the Hugging Face cache is.
    #[command(flatten)]
    pub hub: HubArgs,

    /// Embedding cache capacity in MiB (0 disables it).
    #[arg(long, env = "PGML_PROXY_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,

    /// Most models loaded at once (least recently used is unloaded first).
    #[arg(long, env = "PGML_PROXY_MAX_MODELS", default_value_t = 4)]
    pub max_models: usize,

    /// ONNX Runtime intra-op threads per model (default: the cores available).
    #[arg(long, env = "PGML_PROXY_INTRA_THREADS")]
    pub intra_threads: Option<usize>,

    /// Never download models or datasets, even with --allow-downloads (the default is
    /// already no downloads; kept for scripts that say so explicitly).
    #[arg(long, env = "PGML_PROXY_OFFLINE")]
    pub offline: bool,

    /// Let clients' pgml.embed / pgml.load_dataset calls download missing models and
    /// datasets from the Hugging Face Hub (off: only what is in the hub cache is served).
    #[arg(long, env = "PGML_PROXY_ALLOW_DOWNLOADS")]
    pub allow_downloads: bool,

    /// A directory of local models clients may name (repeatable or comma-separated); a
    /// model outside these is only ever a hub id, never a path on this host.
    #[arg(
        long = "model-dir",
        env = "PGML_PROXY_MODEL_DIRS",
        value_delimiter = ','
    )]
    pub model_dirs: Vec<PathBuf>,

    /// Which precision models compute in.
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

/// Int8 or fp32 per model, and the fidelity guard over int8 files.
#[derive(Clone, Debug, Args)]
pub struct PrecisionArgs {
    /// Models that compute in int8 when pgml.embed's kwargs name no "precision" (repeatable or
    /// comma-separated; `*` = every model). Each needs onnx/model_int8.onnx and its fidelity
    /// record (`make setup` lays both for the default model); the others compute in fp32.
    #[arg(long = "int8", env = "PGML_PROXY_INT8", value_delimiter = ',')]
    pub int8: Vec<String>,

    /// The fidelity guard's floor: an int8 file whose recorded minimum cosine against fp32
    /// (on held-out texts) is below it is refused.
    #[arg(long, env = "PGML_PROXY_INT8_MIN_COSINE", default_value_t = pgml_engine::DEFAULT_INT8_MIN_COSINE)]
    pub int8_min_cosine: f64,

    /// Compute a refused int8 model (no int8 file, no record, or below the floor) in fp32,
    /// with a warning in the log, instead of failing the call.
    #[arg(long, env = "PGML_PROXY_INT8_FALLBACK")]
    pub int8_fallback: bool,
}

impl EngineArgs {
    /// The engine configuration these options describe.
    pub fn engine_config(&self) -> pgml_engine::EngineConfig {
        pgml_engine::EngineConfig {
            cache_bytes: self.cache_mb * 1024 * 1024,
            max_models: self.max_models.max(1),
            intra_threads: self.intra_threads,
            allow_download: self.downloads(),
            allowed_model_dirs: self.model_dirs.clone(),
            hub_cache_dir: self.hub.dir(),
            ort_dylib: self.ort_dylib.clone(),
            int8_models: self.precision.int8.clone(),
            int8_min_cosine: self.precision.int8_min_cosine,
            int8_fallback: self.precision.int8_fallback,
            ..pgml_engine::EngineConfig::default()
        }
    }

    /// Whether downloads from the hub are enabled.
    pub fn downloads(&self) -> bool {
        self.allow_downloads && !self.offline
    }
}

/// Options of `pgml-proxy embed`.
#[derive(Clone, Debug, Args)]
pub struct EmbedArgs {
    /// Model: a Hugging Face repo id or a local directory.
    #[arg(long, env = "PGML_PROXY_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// pgml.embed kwargs, a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,

    /// Engine options.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Options of `pgml-proxy chunk`.
#[derive(Clone, Debug, Args)]
pub struct ChunkArgs {
    /// Splitter, as pgml.chunk names it (recursive_character, character, markdown, latex, python).
    #[arg(long, default_value = "recursive_character")]
    pub splitter: String,

    /// pgml.chunk kwargs, a JSON object (chunk_size, chunk_overlap, separators...).
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
}

/// Options of `pgml-proxy install`.
#[derive(Clone, Debug, Args)]
pub struct InstallArgs {
    /// Database to install into, with credentials: postgres://USER:PASSWORD@HOST:PORT/DB.
    #[arg(long, env = "PGML_PROXY_INSTALL_URL")]
    pub upstream: String,

    /// Print the SQL install would run (one transaction, the generated password replaced)
    /// after its read-only checks, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `pgml-proxy doctor`: the paths the other subcommands use, and a database to check.
#[derive(Clone, Debug, Args)]
pub struct DoctorArgs {
    /// The ONNX Runtime library (libonnxruntime.so) to load.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,

    /// Where the Hugging Face cache is.
    #[command(flatten)]
    pub hub: HubArgs,

    /// Postgres installation for the embedded Postgres (bin/postgres, bin/initdb, pgvector).
    #[arg(long, env = "PGML_PROXY_PG_DIR")]
    pub pg_dir: Option<PathBuf>,

    /// Where pgml.load_dataset may read local files.
    #[command(flatten)]
    pub datasets: DatasetArgs,

    /// Also check this database, with credentials: postgres://USER:PASSWORD@HOST:PORT/DB
    /// (reachable, its Postgres and pgvector versions, the installed shim version).
    #[arg(long)]
    pub upstream: Option<String>,

    /// The remote model routes to check, as `serve` takes them: each server must answer
    /// GET {base}/models.
    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Which precision each model computes in, as `serve` takes it.
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

/// Remote model servers: the routes (`--remote-model`) for pgml.embed and pgml.transform,
/// the bearer token they get, and how long pgml.transform waits for one.
#[derive(Clone, Args)]
pub struct RemoteArgs {
    /// Serve a model from a remote server, as MODEL=URL (repeatable or comma-separated). MODEL
    /// is a name, a pattern ending in `*` (`meta-llama/*`), or `*` for every model; an exact
    /// name beats a pattern, a longer pattern a shorter one. URL: http(s)://host:port/v1 (an
    /// OpenAI-compatible API: /v1/embeddings for pgml.embed, /v1/completions and
    /// /v1/chat/completions for pgml.transform), openai+http://host:port, or
    /// tei+http://host:port (text-embeddings-inference, embeddings only).
    #[arg(long, env = "PGML_PROXY_REMOTE_MODEL", value_delimiter = ',')]
    pub remote_model: Vec<String>,

    /// Bearer token sent to every remote model server. Prefer the environment variable or the
    /// settings file (`remote-token = "..."`) to the flag, which other users can see in the
    /// process list. Never taken from SQL, never logged.
    #[arg(long, env = "PGML_PROXY_REMOTE_TOKEN", hide_env_values = true)]
    pub remote_token: Option<String>,

    /// Seconds pgml.transform waits for a model server: for a whole answer, or for each piece
    /// of a stream (a call served through the upcall is also bounded by --upcall-timeout-ms).
    #[arg(long, env = "PGML_PROXY_GENERATE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub generate_timeout: u64,
}

impl RemoteArgs {
    /// How embedding requests are made: the defaults, with the token.
    pub fn embed_config(&self) -> pgml_engine::RemoteConfig {
        pgml_engine::RemoteConfig {
            token: self.token(),
            ..pgml_engine::RemoteConfig::default()
        }
    }

    /// How generation requests are made: `embed_config` with --generate-timeout.
    pub fn generate_config(&self) -> pgml_engine::RemoteConfig {
        pgml_engine::RemoteConfig {
            timeout: std::time::Duration::from_secs(self.generate_timeout),
            ..self.embed_config()
        }
    }

    fn token(&self) -> Option<String> {
        self.remote_token.clone().filter(|t| !t.is_empty())
    }
}

impl std::fmt::Debug for RemoteArgs {
    /// Route URLs without their passwords; the token never.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<String> = self
            .remote_model
            .iter()
            .map(|spec| match spec.split_once('=') {
                Some((model, url)) => format!("{model}={}", crate::net::url::redact_url(url)),
                None => spec.clone(),
            })
            .collect();
        f.debug_struct("RemoteArgs")
            .field("remote_model", &routes)
            .field("remote_token", &self.remote_token.as_ref().map(|_| "***"))
            .field("generate_timeout", &self.generate_timeout)
            .finish()
    }
}

/// Where `pgml.load_dataset` may read local files: nowhere else on this host.
#[derive(Clone, Debug, Args)]
pub struct DatasetArgs {
    /// Bundled datasets directory (the repo's datasets/).
    #[arg(long, env = "PGML_PROXY_DATASETS_DIR", default_value = "datasets")]
    pub datasets_dir: PathBuf,

    /// Another directory local dataset files may be read from (repeatable or
    /// comma-separated); no other path on this host can be named by a client.
    #[arg(
        long = "dataset-dir",
        env = "PGML_PROXY_DATASET_DIRS",
        value_delimiter = ','
    )]
    pub dataset_dirs: Vec<PathBuf>,
}

impl DatasetArgs {
    /// The load settings these options give, with downloads allowed or not and the hub
    /// cache `hub` names.
    pub fn settings(&self, allow_downloads: bool, hub: &HubArgs) -> DatasetSettings {
        DatasetSettings {
            datasets_dir: Some(self.datasets_dir.clone()),
            dataset_dirs: self.dataset_dirs.clone(),
            allow_downloads,
            hub_cache: hub.dir(),
        }
    }
}
