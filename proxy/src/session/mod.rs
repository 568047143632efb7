//! One client session: the listener that accepts it, the connection from accept to close,
//! the relay loop, the session's I/O (`SessionIo`), the hook point interceptors plug into,
//! and the state tracked from the message stream. Nothing here knows about `pgml`.

pub mod admission;
pub mod auth;
pub mod budget;
pub mod connection;
pub mod cpu_affinity;
pub mod hook;
pub mod io;
pub mod listener;
pub mod relay;
mod relay_threads;
pub mod state;
pub mod streaming;
pub mod timing;
