//! pgml-proxy: a Postgres wire-protocol proxy. This crate owns the listener, TLS, the
//! startup/auth relay, the message relay and session state, the interception hook point,
//! the embedded Postgres launcher and the CLI wiring.

pub mod cli;
pub mod commands;
pub mod config;
mod connection;
pub mod embedded;
mod embedding;
pub mod error;
mod extended;
pub mod frame;
pub mod hook;
pub mod intercept;
pub mod listener;
pub mod load_dataset;
pub mod messages;
pub mod metrics;
pub mod os_user;
mod pgbinary;
mod private;
pub mod relay;
pub mod serve;
pub mod session;
pub mod shim;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upcall;
pub mod upstream;

pub use cli::{Cli, Command, ServeArgs};
pub use embedded::{EmbeddedOptions, EmbeddedPostgres};
pub use error::{ProxyError, Result};
pub use frame::Frame;
pub use hook::{Interceptor, Passthrough, SessionHook, SessionInfo};
pub use intercept::{InterceptConfig, Interception};
pub use listener::{run, RelayConfig};
pub use metrics::Metrics;
pub use relay::{Event, SessionIo};
pub use serve::serve;
pub use session::SessionState;
pub use upstream::{SslMode, Upstream};
