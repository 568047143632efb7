#!/usr/bin/env bash
# make bench-clients: real client libraries through the proxy versus the engine alone, in one run.
#  1. Spring AI's PostgresMlEmbeddingModel batch statement (`SELECT pgml.embed(?, text, ?::JSONB)
#     AS embedding FROM (SELECT unnest(?) AS text) AS texts`, a text[] of ROWS review texts)
#     through pgjdbc (integration-tests/clients/SpringAiStatements.java in bench mode: one
#     warm-up call on other texts, then one timed call, executeQuery + reading every row)
#     versus `pgml-proxy embed` on the same texts (model-load time subtracted). Target >= 0.85.
#  2. korvus upsert_documents of DOCS documents (bench/korvus_upsert.py) versus the engine's
#     chunker (`pgml-proxy chunk`, JSON-lines texts in, JSON arrays of chunks out) +
#     `pgml-proxy embed`. Target >= 0.8. Needs pgml.chunk and PostgresML's catalog
#     (pgml.projects) through the proxy.
# Each step embeds texts no other step embedded (distinct prefixes), so no cache serves it.
# Env: ROWS (1000), DOCS (2000), PGML_PROXY_BIN, PGJDBC_JAR; needs `make setup` (pgjdbc from
# libpostgresql-jdbc-java, a JDK, korvus in .venv). Exits non-zero when a half could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PGML_PROXY_PG_DIR:-}" ]; then
  eval "$(sed -n 's/^export \([A-Z_]*\) := \(.*\)/export \1=\2/p' .cache/env.mk)"
fi
ROWS=${ROWS:-1000}
DOCS=${DOCS:-2000}
MODEL=sentence-transformers/all-MiniLM-L6-v2
BIN=${PGML_PROXY_BIN:-${CARGO_TARGET_DIR:-target}/release/pgml-proxy}
PSQL=$PGML_PROXY_PG_DIR/bin/psql
PYTHON=${PGML_PROXY_VENV:-$PWD/.venv}/bin/python
JAR=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/pgml-bench-clients.XXXXXX); chmod 755 "$WORK"
PPORT=$(free_port); GPORT=$(free_port)
# The proxy's stdin stays open while a sleep of ours holds the FIFO (both ended on exit; the
# sleep's stdout is not ours, so a pipe after this script still sees EOF).
mkfifo "$WORK/stdin"
sleep 100000 >"$WORK/stdin" 2>/dev/null &
SLEEP_PID=$!
"$BIN" serve --listen "127.0.0.1:$PPORT" --embedded-port "$GPORT" --data-dir "$WORK/pgdata" \
  --preload "$MODEL" --exit-on-stdin-eof <"$WORK/stdin" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
trap 'rc=$?; kill $PROXY_PID $SLEEP_PID 2>/dev/null; wait $PROXY_PID $SLEEP_PID 2>/dev/null || true; rm -rf "$WORK"; exit $rc' EXIT
for _ in $(seq 300); do "$PGML_PROXY_PG_DIR/bin/pg_isready" -q -h 127.0.0.1 -p "$PPORT" && break; sleep 0.2; done
export PGPASSWORD=postgres
URL="postgres://postgres:postgres@127.0.0.1:$PPORT/postgres"
P=("$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 "$URL")
now() { date +%s.%N; }
export RUST_LOG=${RUST_LOG:-warn}

"${P[@]}" -c "SELECT * FROM pgml.load_dataset('reviews_sample', NULL, $ROWS)" >/dev/null
"${P[@]}" -c "CREATE TABLE reviews AS SELECT review_body FROM pgml.reviews_sample;
              ALTER TABLE reviews ADD COLUMN id serial PRIMARY KEY"

spring_summary="Spring AI batch (pgjdbc): not run"
spring_ok=0
echo "== Spring AI batch statement through pgjdbc vs the engine alone ($ROWS review texts, $(nproc) cores) =="
if [ ! -f "$JAR" ]; then
  echo "pgjdbc not found at $JAR: install it with (sudo) apt-get install -y libpostgresql-jdbc-java (make setup does as root), or set PGJDBC_JAR" >&2
  spring_summary="Spring AI batch (pgjdbc): FAILED (no pgjdbc at $JAR)"
elif ! command -v javac >/dev/null; then
  echo "javac not found: the Spring AI half needs a JDK 17+ (e.g. apt-get install default-jdk-headless)" >&2
  spring_summary="Spring AI batch (pgjdbc): FAILED (no javac)"
else
  javac -encoding UTF-8 -d "$WORK/java" integration-tests/clients/SpringAiStatements.java
  # Engine alone: the same texts ('jdbc: ' || review_body, in id order) through `pgml-proxy
  # embed` (own process, cold cache); the model-load time (one text) is subtracted.
  "${P[@]}" -c "COPY (SELECT to_json('jdbc: ' || review_body) FROM reviews ORDER BY id) TO STDOUT" > "$WORK/texts.jsonl"
  head -n 1 "$WORK/texts.jsonl" > "$WORK/one.jsonl"
  t0=$(now); "$BIN" embed --model "$MODEL" < "$WORK/one.jsonl" >/dev/null; t1=$(now)
  "$BIN" embed --model "$MODEL" < "$WORK/texts.jsonl" > "$WORK/engine.out"; t2=$(now)
  engine_s=$(python3 -c "print(($t2-$t1)-($t1-$t0))")
  [ "$(wc -l < "$WORK/engine.out")" = "$ROWS" ] || { echo "engine: expected $ROWS vectors" >&2; exit 1; }
  # Through the proxy: warm-up call on 'jdbc-warm: ' texts, then the timed call on 'jdbc: ' texts.
  out=$(java -cp "$WORK/java:$JAR" SpringAiStatements bench \
    "jdbc:postgresql://127.0.0.1:$PPORT/postgres?user=postgres&password=postgres" \
    "$MODEL" reviews 'jdbc: ' 'jdbc-warm: ')
  proxy_s=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); assert r['rows']==$ROWS, r; print(r['seconds'])" "$out")
  ratio=$(python3 -c "print(f'{$engine_s/$proxy_s:.2f}')")
  printf 'engine alone:              %.3f s  (%.1f texts/s)\n' "$engine_s" "$(python3 -c "print($ROWS/$engine_s)")"
  printf 'Spring AI batch (pgjdbc):  %.3f s  (%.1f texts/s)\n' "$proxy_s" "$(python3 -c "print($ROWS/$proxy_s)")"
  echo "ratio engine/proxy:        $ratio  (target >= 0.85)"
  spring_summary="Spring AI batch (pgjdbc), $ROWS texts: proxy ${proxy_s:0:6} s, engine ${engine_s:0:6} s, ratio $ratio (target >= 0.85)"
  spring_ok=1
fi

echo "== korvus upsert_documents vs the engine's chunker + embed ($DOCS documents) =="
korvus_summary="korvus upsert ($DOCS documents): FAILED"
korvus_ok=0
if [ ! -x "$PYTHON" ]; then
  echo "no Python at $PYTHON: run make setup (korvus==1.1.5 is pinned in requirements.txt)" >&2
elif korvus_out=$(PGML_PROXY_BIN="$BIN" "$PYTHON" bench/korvus_upsert.py --url "$URL" --docs "$DOCS" --table reviews --prefix korvus-bench); then
  echo "$korvus_out"
  korvus_summary="korvus upsert ($DOCS documents): $(echo "$korvus_out" | sed -n 's/^ratio engine\/korvus: *//p' | sed 's/^/ratio /')"
  korvus_ok=1
else
  echo "$korvus_out"
fi

echo "== summary =="
echo "$spring_summary"
echo "$korvus_summary"
[ "$spring_ok" = 1 ] && [ "$korvus_ok" = 1 ]
