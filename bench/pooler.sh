#!/usr/bin/env bash
# make bench-pooler: the article's `SELECT review_body, pgml.embed(M, 'passage: ' || review_body)
# FROM reviews LIMIT 1000` through the proxy straight to Postgres, and through the proxy in front
# of a transaction-mode PgBouncer (how Supabase's 6543, Neon's -pooler host or PgBouncer in front
# of RDS are reached), alternating rounds in one run. Each round embeds texts no earlier round
# embedded (its own prefix), so the engine cache serves neither. Prints rows/s per target and
# the ratio pooled/direct (target >= 0.9).
# Env: ROWS (1000), ROUNDS (3), PGML_PROXY_BIN; needs `make setup` (PgBouncer from apt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PGML_PROXY_PG_DIR:-}" ]; then
  eval "$(sed -n 's/^export \([A-Z_]*\) := \(.*\)/export \1=\2/p' .cache/env.mk)"
fi
ROWS=${ROWS:-1000}
ROUNDS=${ROUNDS:-3}
MODEL=sentence-transformers/all-MiniLM-L6-v2
BIN=${PGML_PROXY_BIN:-${CARGO_TARGET_DIR:-target}/release/pgml-proxy}
PSQL=$PGML_PROXY_PG_DIR/bin/psql
command -v pgbouncer >/dev/null || { echo "bench-pooler: pgbouncer is not installed (apt-get install -y pgbouncer)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/pgml-bench-pooler.XXXXXX); chmod 755 "$WORK"
SPORT=$(free_port); GPORT=$(free_port); BPORT=$(free_port); PPORT=$(free_port); QPORT=$(free_port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
ready() { for _ in $(seq 300); do "$PGML_PROXY_PG_DIR/bin/pg_isready" -q -h 127.0.0.1 -p "$1" && return 0; sleep 0.2; done; return 1; }

# The embedded stack, for Postgres and the set-up only.
"$BIN" serve --listen "127.0.0.1:$SPORT" --embedded-port "$GPORT" --data-dir "$WORK/pgdata" \
  --exit-on-stdin-eof < <(sleep 100000) >"$WORK/embedded.log" 2>&1 &
pids+=($!)
ready "$SPORT" || { cat "$WORK/embedded.log"; exit 1; }
export PGPASSWORD=postgres
P=("$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:$SPORT/postgres")
"${P[@]}" -c "SELECT * FROM pgml.load_dataset('reviews_sample', NULL, $ROWS)" >/dev/null
"${P[@]}" -c "CREATE TABLE reviews AS SELECT review_body FROM pgml.reviews_sample"
SERVICE_PASSWORD=bench-$RANDOM$RANDOM
"${P[@]}" -c "ALTER ROLE pgml_proxy_service PASSWORD '$SERVICE_PASSWORD'"

# The two targets, same binary and flags: a proxy straight to Postgres, and a proxy in front of
# PgBouncer 1.18 in transaction mode, its service connection through PgBouncer too.
"$BIN" serve --listen "127.0.0.1:$PPORT" --upstream "postgres://127.0.0.1:$GPORT" \
  --service-url "postgres://pgml_proxy_service:$SERVICE_PASSWORD@127.0.0.1:$GPORT/postgres" \
  --preload "$MODEL" --exit-on-stdin-eof < <(sleep 100000) >"$WORK/direct.log" 2>&1 &
pids+=($!)
ready "$PPORT" || { cat "$WORK/direct.log"; exit 1; }
printf '"postgres" "postgres"\n"pgml_proxy_service" "%s"\n' "$SERVICE_PASSWORD" >"$WORK/userlist.txt"
cat >"$WORK/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$GPORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
ignore_startup_parameters = extra_float_digits
default_pool_size = 4
INI
chmod 644 "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
as_user=(); [ "$(id -u)" = 0 ] && as_user=(-u pgmlproxy)
pgbouncer "${as_user[@]}" "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.log" 2>&1 &
pids+=($!)
ready "$BPORT" || { cat "$WORK/pgbouncer.log"; exit 1; }
"$BIN" serve --listen "127.0.0.1:$QPORT" --upstream "postgres://127.0.0.1:$BPORT" \
  --service-url "postgres://pgml_proxy_service:$SERVICE_PASSWORD@127.0.0.1:$BPORT/postgres" \
  --preload "$MODEL" --exit-on-stdin-eof < <(sleep 100000) >"$WORK/pooled.log" 2>&1 &
pids+=($!)
ready "$QPORT" || { cat "$WORK/pooled.log"; exit 1; }

now() { date +%s.%N; }
declare -A total=([direct]=0 [pooled]=0)
echo "== SELECT ... pgml.embed(col) LIMIT $ROWS: proxy -> Postgres vs proxy -> PgBouncer (transaction) -> Postgres, $ROUNDS rounds, $(nproc) cores =="
for round in $(seq "$ROUNDS"); do
  for target in direct pooled; do
    port=$PPORT; [ "$target" = pooled ] && port=$QPORT
    t0=$(now)
    n=$("$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:$port/postgres" \
      -c "SELECT review_body, pgml.embed('$MODEL', '$target $round: ' || review_body) FROM reviews LIMIT $ROWS" | grep -c '|{')
    t1=$(now)
    [ "$n" = "$ROWS" ] || { echo "expected $ROWS embeddings from $target, got $n" >&2; exit 1; }
    s=$(python3 -c "print($t1-$t0)")
    total[$target]=$(python3 -c "print(${total[$target]}+$s)")
    printf '  round %s  %-7s %7.1f rows/s\n' "$round" "$target" "$(python3 -c "print($ROWS/$s)")"
  done
done
python3 -c "
d, p = ${total[direct]}, ${total[pooled]}
print(f'direct  {$ROWS*$ROUNDS/d:7.1f} rows/s')
print(f'pooled  {$ROWS*$ROUNDS/p:7.1f} rows/s')
print(f'ratio pooled/direct: {d/p:.2f}  (target >= 0.90)')"
