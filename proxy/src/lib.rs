//! pgml-proxy: a Postgres wire-protocol proxy that serves `pgml.embed()` for any Postgres.
//! Four rooms, each with a `mod.rs` that says what lives there:
//! - `net`: bytes on the wire (frames, one file per message kind, streams, TLS, upstream, startup);
//! - `session`: one client session (listener, connection, relay, I/O, hook point, state);
//! - `intercept`: what the proxy does with `pgml.*` statements (one file per path);
//! - `app`: the binary's wiring (CLI, config, serve, embedded Postgres, metrics, commands).

pub mod app;
pub mod error;
pub mod intercept;
pub mod metrics;
pub mod net;
pub mod session;

pub use app::cli::{Cli, Command, ServeArgs};
pub use app::embedded::{EmbeddedOptions, EmbeddedPostgres};
pub use app::serve::serve;
pub use error::{ProxyError, Result};
pub use intercept::{InterceptConfig, Interception};
pub use metrics::Metrics;
pub use net::frame::Frame;
pub use net::upstream::{SslMode, Upstream};
pub use session::hook::{Interceptor, Passthrough, SessionHook, SessionInfo};
pub use session::io::{Event, SessionIo};
pub use session::listener::{run, RelayConfig};
pub use session::state::SessionState;
