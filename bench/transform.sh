#!/usr/bin/env bash
# make bench-transform: pgml.transform through the proxy (embedded Postgres) against the
# integration tests' OpenAI-compatible server answering after a fixed delay: 32 sessions calling
# at once vs the same 32 calls one after another (ratio concurrent/serial), and how long after
# the server writes a stream's first chunk the client has pgml.transform_stream's first row
# (cursor + FETCH 1, and a plain SELECT; target 10 ms); and a SELECT with a column argument over
# 32 rows, planned vs row by row. integration-tests/examples/bench_transform.rs.
# Env: SESSIONS (32), DELAY_MS (50), ROUNDS (3), STREAM_ROUNDS (5), WORDS (8), PGML_PROXY_BIN;
# needs `make setup` (loads .cache/env.mk itself).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PGML_PROXY_PG_DIR:-}" ]; then
  eval "$(sed -n 's/^export \([A-Z_]*\) := \(.*\)/export \1=\2/p' .cache/env.mk)"
fi
# The proxy measured is the one built from this checkout, unless PGML_PROXY_BIN names another.
[ -n "${PGML_PROXY_BIN:-}" ] || cargo build --release --locked -q -p pgml-proxy --bin pgml-proxy
cargo build --release --locked -q -p pgml-integration-tests --example bench_transform
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_transform"
