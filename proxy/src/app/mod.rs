//! The binary's wiring: command line, config file, `serve`, the embedded Postgres launcher,
//! the Prometheus endpoint and the other subcommands. No protocol handling lives here.

pub mod args;
pub mod cli;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod embedded;
pub mod exposition;
pub mod os_user;
mod pg_process;
pub mod reachable;
pub mod serve;
pub mod service_role;
pub mod upstream_trust;
