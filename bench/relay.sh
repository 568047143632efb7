#!/usr/bin/env bash
# Relay speed: pgbench -S with -M prepared and -M simple (-c 8 -j 2) and -M prepared -c 1
# (latency-bound), -T 15 each, directly against the embedded Postgres, through pgml-proxy, and
# (when installed: `make setup` installs it as root) through a session-mode PgBouncer,
# alternating rounds. Prints tps, the ratio to direct, proxy/PgBouncer (target >= 1.10 at -c 8,
# >= 1.0 at -c 1), the user+sys CPU per transaction of the relay process and its user part
# (/proc/PID/stat), and the share of the machine's CPU time left idle during the run
# (/proc/stat). Single pgbench runs on a small VM land in one of two or three throughput
# levels depending on where the scheduler places pgbench, the backends and the relay, so the
# default is many short rounds.
# pgbench always connects over TCP; pgml-proxy reaches the embedded Postgres over its Unix
# socket, and PgBouncer is given the same socket so that the comparison is like for like.
# Each run also prints the relay process's voluntary+involuntary context switches per
# transaction (about 2+0.8 in the fast level, under 1.5 voluntary in the slow one) and the
# machine's rescheduling IPIs per transaction, which set the level.
# Env: BENCH_DURATION (8), BENCH_ROUNDS (6), BENCH_CLIENTS (8), PGML_PROXY_BIN, BENCH_B_ARGS
# (a second pgml-proxy with these extra arguments, e.g. "--relay-threads 0", as proxy_b;
# "--relay-threads 1" compares one relay thread with single-threaded PgBouncer, per core),
# BENCH_FLOOR=1 (also the floor: a one-thread byte pipe, examples/floor_relay.rs, as "floor";
# BENCH_FLOOR_THREADS=2 gives it two I/O threads; the summary prints proxy_b's CPU per
# transaction against the floor's), BENCH_FLOOR_TRACK=1 (also the floor's loop framing and
# tracking every message as the lean path does), BENCH_FLOOR_TOKIO=1 (also the same pipe on tokio),
# BENCH_PLACEMENT=1 (also print, mid-run, the CPU of each pgbench thread and of each busy
# backend: the scheduler fixes them when the connections open and they rarely move after).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PGML_PROXY_PG_DIR:-}" ]; then
  [ -f .cache/env.mk ] || { echo "bench-relay: run \`make setup\` first" >&2; exit 1; }
  eval "$(sed -n 's/^export \([A-Z_]*\) := \(.*\)/export \1=\2/p' .cache/env.mk)"
fi
BIN=${PGML_PROXY_BIN:-${CARGO_TARGET_DIR:-target}/release/pgml-proxy}
[ -x "$BIN" ] || { echo "bench-relay: no $BIN (cargo build --release -p pgml-proxy)" >&2; exit 1; }
DURATION=${BENCH_DURATION:-8}
ROUNDS=${BENCH_ROUNDS:-6}
CLIENTS=${BENCH_CLIENTS:-8}
PGBENCH=$PGML_PROXY_PG_DIR/bin/pgbench
PSQL=$PGML_PROXY_PG_DIR/bin/psql
PROXY_PORT=${BENCH_PROXY_PORT:-16432}
PG_PORT=${BENCH_PG_PORT:-16433}
BOUNCER_PORT=${BENCH_BOUNCER_PORT:-16434}
export PGPASSWORD=postgres

work=$(mktemp -d /tmp/pgml-bench-relay.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$BIN" serve --listen "127.0.0.1:$PROXY_PORT" --data-dir "$work/pgdata" \
  --embedded-port "$PG_PORT" --shutdown-timeout 5 >"$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  "$PSQL" -X -q -c 'select 1' "postgres://postgres@127.0.0.1:$PROXY_PORT/postgres" >/dev/null 2>&1 && break
  sleep 0.1
done
"$PSQL" -X -q -c 'select 1' "postgres://postgres@127.0.0.1:$PROXY_PORT/postgres" >/dev/null \
  || { cat "$work/proxy.log"; exit 1; }

declare -A url=(
  [direct]="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  [proxy]="postgres://postgres@127.0.0.1:$PROXY_PORT/postgres"
)
targets=(direct proxy)
# ready URL TRIES: true once `select 1` works at URL (tries every 0.1 s).
ready() {
  for _ in $(seq 1 "$2"); do
    "$PSQL" -X -q -c 'select 1' "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
declare -A pid_of=([proxy]=${pids[0]})
# A/B: BENCH_B_ARGS="--relay-threads 0" runs a second pgml-proxy ("proxy_b") with those extra
# arguments on the same upstream socket, measured in the same rounds.
if [ -n "${BENCH_B_ARGS:-}" ]; then
  B_PORT=${BENCH_B_PORT:-16435}
  # shellcheck disable=SC2086
  "$BIN" serve --listen "127.0.0.1:$B_PORT" --shutdown-timeout 5 $BENCH_B_ARGS \
    --upstream "postgres://postgres:postgres@/postgres?host=$work/pgdata&port=$PG_PORT" >"$work/proxy_b.log" 2>&1 &
  pids+=($!)
  pid_of[proxy_b]=$!
  url[proxy_b]="postgres://postgres@127.0.0.1:$B_PORT/postgres"
  ready "${url[proxy_b]}" 100 || { cat "$work/proxy_b.log"; exit 1; }
  targets+=(proxy_b)
fi
# A floor variant: NAME EXAMPLE PORT [ENV=VALUE...] [-- ARGS...], built and started on the
# embedded Postgres' socket, and measured in the same rounds.
floor_target() {
  local name=$1 example=$2 port=$3
  shift 3
  local env=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do env+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  cargo build --release --locked -q -p pgml-proxy --example "$example"
  env "${env[@]}" "${CARGO_TARGET_DIR:-target}/release/examples/$example" "127.0.0.1:$port" \
    "$work/pgdata/.s.PGSQL.$PG_PORT" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
  url[$name]="postgres://postgres@127.0.0.1:$port/postgres"
  ready "${url[$name]}" 50 || { cat "$work/$name.log"; exit 1; }
  targets+=("$name")
}
# BENCH_FLOOR=1: the floor for any relay here (examples/floor_relay.rs: one thread, bytes piped
# between client and upstream socket with no framing at all).
if [ "${BENCH_FLOOR:-0}" = 1 ]; then
  floor_target floor floor_relay "${BENCH_FLOOR_PORT:-16436}" -- "${BENCH_FLOOR_THREADS:-1}"
fi
# BENCH_FLOOR_TRACK=1: the same epoll loop framing every message and recording it in a
# SessionState as the lean path does, as "floor_track": what a relay core on that loop would
# cost with the proxy's protocol tracking (the interception layer's checks left out).
if [ "${BENCH_FLOOR_TRACK:-0}" = 1 ]; then
  floor_target floor_track floor_relay "${BENCH_FLOOR_TRACK_PORT:-16438}" FLOOR_TRACK=1 -- 1
fi
# BENCH_FLOOR_TOKIO=1: the same byte pipe on one tokio current-thread runtime
# (examples/floor_tokio.rs, copy_bidirectional), as "floor_tokio": what the runtime itself
# costs per transaction beside the bare epoll floor.
if [ "${BENCH_FLOOR_TOKIO:-0}" = 1 ]; then
  floor_target floor_tokio floor_tokio "${BENCH_FLOOR_TOKIO_PORT:-16437}"
fi
if command -v pgbouncer >/dev/null; then
  printf '"postgres" "postgres"\n' >"$work/userlist.txt"
  cat >"$work/pgbouncer.ini" <<INI
[databases]
postgres = host=$work/pgdata port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
INI
  as_user=()
  [ "$(id -u)" = 0 ] && as_user=(-u pgmlproxy)
  chmod 644 "$work/userlist.txt" "$work/pgbouncer.ini"
  pgbouncer "${as_user[@]}" "$work/pgbouncer.ini" >/dev/null 2>&1 &
  pids+=($!)
  pid_of[pgbouncer]=$!
  url[pgbouncer]="postgres://postgres@127.0.0.1:$BOUNCER_PORT/postgres"
  if ready "${url[pgbouncer]}" 50; then
    targets+=(pgbouncer)
  else
    echo "bench-relay: pgbouncer did not start; skipping it" >&2
  fi
else
  echo "bench-relay: pgbouncer not installed (apt-get install -y pgbouncer); skipping it" >&2
fi

# busy and idle CPU ticks of the whole machine so far, from /proc/stat.
machine_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}

# rescheduling IPIs sent so far, all CPUs (/proc/interrupts RES): a wake-up that preempts the
# task running on another CPU sends one, and on this VM each is so costly that a run's tps
# follows them (about 0.02 per transaction in the fast level, 0.2-0.5 in the slow one).
resched_ipis() {
  awk '$1 == "RES:" { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i } END { print n + 0 }' /proc/interrupts
}

# voluntary and involuntary context switches of a process so far (all its threads).
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 } END { print v + 0, n + 0 }'
}

# the CPU a task last ran on, from its stat FILE (field 39).
cpu_of() {
  awk '{ sub(/^.*\) /, ""); printf "%s", $37 }' "$1" 2>/dev/null
}

# "pgbench <cpus> backends <cpus>": the CPU each thread of pgbench PID runs on, and that of
# each backend that used CPU in the last half second (idle pooled backends left out).
placement() {
  local threads="" backends="" t p
  for t in /proc/"$1"/task/*/stat; do threads+=$(cpu_of "$t" || true); done
  declare -A was=()
  for p in $(pgrep -f '^postgres: '); do was[$p]=$(cpu_s "$p" 2>/dev/null || echo x); done
  sleep 0.5
  for p in "${!was[@]}"; do
    [ "$(cpu_s "$p" 2>/dev/null || echo x)" != "${was[$p]}" ] || continue
    backends+=$(cpu_of "/proc/$p/stat" || true)
  done
  echo "pgbench $threads backends $backends"
}

# user and sys CPU seconds of a process so far (all its threads), from /proc/<pid>/stat.
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print $12 / hz, $13 / hz }' "/proc/$1/stat"
}

"$PGBENCH" -i -s 1 -q "${url[direct]}" >/dev/null 2>&1
echo "pgbench -S -j 2 -T $DURATION (-c $CLIENTS, and -c 1 for latency), $ROUNDS rounds, $(nproc) cores"
results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for load in "prepared $CLIENTS" "simple $CLIENTS" "prepared 1"; do
    read -r mode clients <<<"$load"
    jobs=$(( clients < 2 ? clients : 2 ))
    for target in "${targets[@]}"; do
      pid=${pid_of[$target]:-}
      user0=0; sys0=0; vol0=0; inv0=0
      [ -n "$pid" ] && { read -r user0 sys0 < <(cpu_s "$pid"); read -r vol0 inv0 < <(switches "$pid"); }
      read -r busy0 idle0 < <(machine_ticks)
      ipi0=$(resched_ipis)
      "$PGBENCH" -n -S -c "$clients" -j "$jobs" -T "$DURATION" -M "$mode" "${url[$target]}" >"$work/pgbench.out" 2>&1 &
      where=""
      if [ "${BENCH_PLACEMENT:-0}" = 1 ]; then
        sleep $(( DURATION / 2 ))
        where="  $(placement $!)"
      fi
      wait $!
      out=$(cat "$work/pgbench.out")
      read -r busy1 idle1 < <(machine_ticks)
      ipi1=$(resched_ipis)
      idle=$(awk -v b=$((busy1 - busy0)) -v i=$((idle1 - idle0)) 'BEGIN { printf "%.0f", ((b + i) > 0 ? 100 * i / (b + i) : 0) }')
      tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' <<<"$out")
      txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
      cpu_us=-; user_us=-; sw=-; ipis=-
      [ "${txns:-0}" -gt 0 ] && ipis=$(awk -v d=$((ipi1 - ipi0)) -v n="$txns" 'BEGIN { printf "%.3f", d / n }')
      if [ -n "$pid" ] && [ "${txns:-0}" -gt 0 ]; then
        read -r user1 sys1 < <(cpu_s "$pid")
        read -r cpu_us user_us < <(awk -v u0="$user0" -v s0="$sys0" -v u1="$user1" -v s1="$sys1" -v n="$txns" \
          'BEGIN { printf "%.1f %.1f\n", (u1 - u0 + s1 - s0) * 1e6 / n, (u1 - u0) * 1e6 / n }')
        read -r vol1 inv1 < <(switches "$pid")
        sw=$(awk -v v=$((vol1 - vol0)) -v i=$((inv1 - inv0)) -v n="$txns" 'BEGIN { printf "%.2f+%.2f", v / n, i / n }')
      fi
      echo "round $round  -M $mode -c $clients  $target  tps=$tps  cpu/txn=${cpu_us}us (user ${user_us})  switches/txn=$sw  resched-IPIs/txn=$ipis  idle=${idle}%$where"
      echo "$mode/c$clients $target $tps $cpu_us $idle $user_us" >>"$results"
    done
  done
done
echo "summary (mean tps, ratio to direct, mean user+sys CPU per transaction of the relay process and its user part, machine idle):"
awk '{ k = $1" "$2; s[k] += $3; n[k]++; id[k] += $5; if ($4 != "-") { c[k] += $4; u[k] += $6; cn[k]++ } }
  END {
    split("prepared/c'"$CLIENTS"' simple/c'"$CLIENTS"' prepared/c1", loads, " ")
    split("direct proxy proxy_b floor floor_track floor_tokio pgbouncer", ts, " ")
    for (m = 1; m <= 3; m++) for (t = 1; t <= 7; t++) {
      k = loads[m]" "ts[t]
      if (!(k in n)) continue
      mean = s[k] / n[k]; d = s[loads[m]" direct"] / n[loads[m]" direct"]
      cpu = (k in cn) ? sprintf("  cpu/txn %4.1f us (user %3.1f)", c[k] / cn[k], u[k] / cn[k]) : "                            "
      printf "  %-12s %-9s %9.0f tps  ratio %.2f%s  idle %2.0f%%\n", loads[m], ts[t], mean, mean / d, cpu, id[k] / n[k]
    }
    for (m = 1; m <= 3; m++) {
      p = loads[m]" proxy"; b = loads[m]" pgbouncer"; pb = loads[m]" proxy_b"; f = loads[m]" floor"
      if ((p in n) && (b in n))
        printf "  %-12s proxy/pgbouncer %.2f\n", loads[m], (s[p] / n[p]) / (s[b] / n[b])
      if ((pb in n) && (b in n))
        printf "  %-12s proxy_b/pgbouncer %.2f\n", loads[m], (s[pb] / n[pb]) / (s[b] / n[b])
      if ((f in n) && (b in n))
        printf "  %-12s floor/pgbouncer %.2f\n", loads[m], (s[f] / n[f]) / (s[b] / n[b])
      if ((p in n) && (f in n))
        printf "  %-12s proxy/floor %.2f\n", loads[m], (s[p] / n[p]) / (s[f] / n[f])
      # CPU per transaction against the floor (the lean-core target: proxy_b/floor <= 1.05
      # with BENCH_B_ARGS="--relay-threads 1").
      ft = loads[m]" floor_tokio"; fk = loads[m]" floor_track"
      if ((f in cn) && (pb in cn))
        printf "  %-12s cpu/txn proxy_b/floor %.2f\n", loads[m], (c[pb] / cn[pb]) / (c[f] / cn[f])
      if ((f in cn) && (fk in cn))
        printf "  %-12s cpu/txn floor_track/floor %.2f\n", loads[m], (c[fk] / cn[fk]) / (c[f] / cn[f])
      if ((f in cn) && (ft in cn))
        printf "  %-12s cpu/txn floor_tokio/floor %.2f\n", loads[m], (c[ft] / cn[ft]) / (c[f] / cn[f])
      if ((ft in cn) && (pb in cn))
        printf "  %-12s cpu/txn proxy_b/floor_tokio %.2f\n", loads[m], (c[pb] / cn[pb]) / (c[ft] / cn[ft])
    }
  }' "$results"
