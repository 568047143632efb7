# pgml-proxy: `make run` (proxy + embedded Postgres 16/pgvector) and `make test` (everything).
# Both start from nothing: `make setup` installs into .venv/ and .cache/ and builds release.
SHELL := /bin/bash
-include .cache/env.mk

CARGO ?= cargo
PROXY := target/release/pgml-proxy


.PHONY: fuzz
.PHONY: setup run test lint bench bench-relay bench-engine bench-rewriter bench-embed bench-backfill bench-clients bench-pooler bench-transform

setup:
	@bash scripts/setup.sh

run: setup
	@$(MAKE) --no-print-directory _run

_run:
	@echo "pgml-proxy: Postgres 16 + pgvector behind the proxy on 127.0.0.1:6432 (Ctrl-C stops both)."
	@echo "  connect:      psql postgres://postgres:postgres@127.0.0.1:6432/postgres"
	@echo "  walk-through: psql postgres://postgres:postgres@127.0.0.1:6432/postgres -f docs/walkthrough.sql"
	@echo "                (loads the bundled reviews_sample, embeds it three ways, indexes it, searches it)"
	exec $(PROXY) serve

test: setup
	@bash scripts/setup_llamaindex.sh
	@$(MAKE) --no-print-directory _test

# Re-read .cache/env.mk (written by setup) in a sub-make, so a fresh clone works in one call.
# CI runs the property tests with a fixed seed (reproducible); `make fuzz` explores new ones.
_test:
	PROPTEST_RNG_SEED=20261125 $(CARGO) test --release --locked --workspace

# Property-based fuzzing for FUZZ_SECONDS (default 120): the rewriter's planner and renderers,
# and the proxy's decoders, framing, session state and relay loop, with fresh seeds each round.
# A failing input is printed (and kept by proptest); add it as a regression test.
FUZZ_SECONDS ?= 120
fuzz:
	$(CARGO) test --release --locked --no-run -q -p pgml-rewriter -p pgml-proxy --test properties --test protocol_fuzz
	end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do round=$$((round+1)); \
	  PROPTEST_CASES=2000 $(CARGO) test --release --locked -q -p pgml-rewriter --test properties || exit 1; \
	  PROPTEST_CASES=2000 $(CARGO) test --release --locked -q -p pgml-proxy --test protocol_fuzz || exit 1; \
	done; echo "fuzz: $$round rounds, no failure"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

bench: bench-rewriter bench-engine bench-relay bench-embed bench-backfill bench-pooler bench-transform

bench-relay: setup
	@bash bench/relay.sh

bench-engine: setup
	@$(MAKE) --no-print-directory _bench-engine

_bench-engine:
	@bash bench/engine.sh

bench-rewriter:
	$(CARGO) bench --locked -p pgml-rewriter

bench-embed: setup
	@$(MAKE) --no-print-directory _bench-embed

_bench-embed:
	@bash bench/embed.sh

bench-backfill: setup
	@$(MAKE) --no-print-directory _bench-backfill

_bench-backfill:
	@bash bench/backfill.sh

# The article's 1000-row SELECT through the proxy straight to Postgres and through the proxy in
# front of a transaction-mode PgBouncer, alternating rounds (bench/pooler.sh).
bench-pooler: setup
	@$(MAKE) --no-print-directory _bench-pooler

_bench-pooler:
	@bash bench/pooler.sh

# Spring AI's batch statement through pgjdbc and korvus's upsert_documents through the proxy,
# each against the engine alone on the same texts (bench/clients.sh).
bench-clients: setup
	@$(MAKE) --no-print-directory _bench-clients

_bench-clients:
	@bash bench/clients.sh

# pgml.transform through the proxy against the tests' OpenAI-compatible server (50 ms answers):
# 32 sessions at once vs one after another, and pgml.transform_stream's first row after the
# server's first chunk (bench/transform.sh).
bench-transform: setup
	@$(MAKE) --no-print-directory _bench-transform

_bench-transform:
	@bash bench/transform.sh
