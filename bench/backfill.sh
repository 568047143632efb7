#!/usr/bin/env bash
# make bench-backfill: rows/s of `backfill` vs the engine alone on the same 10,000 review texts
# (bundled reviews_sample), on a throwaway Postgres 16 + pgvector; and, when target/release/pgml-proxy
# exists, the article's DO-loop (10 rows per UPDATE) through the proxy on a subset.
# Env: ROWS (10000), BATCH (1000), CONCURRENCY (2), DO_ROWS (500); needs PGML_PROXY_PG_DIR,
# ORT_DYLIB_PATH, HF_HOME (make exports them from .cache/env.mk).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000}; BATCH=${BATCH:-1000}; CONCURRENCY=${CONCURRENCY:-2}; DO_ROWS=${DO_ROWS:-500}
: "${PGML_PROXY_PG_DIR:?run make setup (PGML_PROXY_PG_DIR unset)}"
BIN="$PGML_PROXY_PG_DIR/bin"
TMP=$(mktemp -d); PROXY_PID=""
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown nobody "$TMP"
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
as_pg "$BIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
as_pg "$BIN/pg_ctl" -D "$TMP/data" -l "$TMP/log" -w \
  -o "-p $PORT -k $TMP -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

cargo build --release --locked -q -p pgml-bulk --example bench_backfill
echo "== backfill vs engine alone ($ROWS rows, $(nproc) cores) =="
"${CARGO_TARGET_DIR:-target}/release/examples/bench_backfill" "$URL" "$ROWS" "$BATCH" "$CONCURRENCY"

PROXY=target/release/pgml-proxy
if [ -x "$PROXY" ]; then
  echo "== article DO-loop through the proxy ($DO_ROWS rows, 10 per UPDATE) =="
  PPORT=$(free_port)
  # The throwaway cluster trusts every local connection (initdb -A trust), which serve refuses
  # unless told: only this benchmark reaches it, on loopback.
  "$PROXY" serve --upstream "$URL" --service-url "$URL" --listen "127.0.0.1:$PPORT" \
    --dangerously-allow-passwordless-upstream >"$TMP/proxy.log" 2>&1 &
  PROXY_PID=$!
  for _ in $(seq 150); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PPORT" && break; sleep 0.2; done
  PURL="postgres://postgres@127.0.0.1:$PPORT/postgres"
  "$BIN/psql" -q "$URL" -c "CREATE TABLE do_loop AS SELECT id, review_body, NULL::vector(384) AS emb
                              FROM pgml.reviews_sample WHERE id <= $DO_ROWS"
  START=$(date +%s.%N)
  if "$BIN/psql" -q -v ON_ERROR_STOP=1 "$PURL" -c "DO \$\$ BEGIN FOR i IN 1..(SELECT max(id) FROM do_loop) BY 10 LOOP
      UPDATE do_loop SET emb = pgml.embed('sentence-transformers/all-MiniLM-L6-v2', review_body)
       WHERE id BETWEEN i AND i + 9 AND emb IS NULL; COMMIT; END LOOP; END \$\$"; then
    END=$(date +%s.%N)
    FILLED=$("$BIN/psql" -tA "$URL" -c "SELECT count(emb) FROM do_loop")
    python3 -c "s=$END-$START; print(f'DO-loop: {$FILLED} rows in {s:.2f}s = {$FILLED/s:.1f} rows/s')"
  else
    echo "DO-loop through the proxy failed; proxy log:"; tail -20 "$TMP/proxy.log"
  fi
else
  echo "DO-loop: skipped ($PROXY not built; run make setup)"
fi
