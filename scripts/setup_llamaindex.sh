#!/usr/bin/env bash
# Part of `make test`: LlamaIndex's PostgresML client for integration-tests/tests/korvus_transform.rs,
# in a venv of its own (.venv-llamaindex): its pins (llama-index-core 0.12, pgml 1.1.1, ...) need
# not agree with .venv's. Idempotent: skipped while the pins are those installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=.venv-llamaindex
pins=$(sha256sum requirements-llamaindex.txt | cut -c1-16)
stamp=$venv/.pins-$pins
if [ ! -f "$stamp" ]; then
  echo "setup: installing LlamaIndex's PostgresML client into $venv (test-only)"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q --no-deps -r requirements-llamaindex.txt
  touch "$stamp"
fi
