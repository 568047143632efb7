//! Bytes on the wire: framing, typed views of the protocol messages (one file per kind),
//! client and upstream streams (plain or TLS), the upstream address and the startup phase.
//! Nothing here knows about `pgml` or sessions' SQL.

pub mod encoding;
pub mod frame;
pub mod messages;
pub(crate) mod pgbinary;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod url;
