//! pgml-proxy: a Postgres wire-protocol proxy. This crate owns the listener, TLS, the
//! startup/auth relay, the message relay and session state, the interception hook point,
//! the embedded Postgres launcher and the CLI wiring.

pub mod cli;
mod connection;
pub mod embedded;
pub mod error;
pub mod frame;
pub mod hook;
pub mod listener;
pub mod messages;
pub mod os_user;
pub mod relay;
pub mod serve;
pub mod session;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use cli::{Cli, Command, ServeArgs};
pub use embedded::{EmbeddedOptions, EmbeddedPostgres};
pub use error::{ProxyError, Result};
pub use frame::Frame;
pub use hook::{Interceptor, Passthrough, SessionHook, SessionInfo};
pub use listener::{run, RelayConfig};
pub use relay::{Event, SessionIo};
pub use serve::serve;
pub use session::SessionState;
pub use upstream::{SslMode, Upstream};
