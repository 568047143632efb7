//! Test harness: starts the embedded Postgres and the proxy once per test binary.
