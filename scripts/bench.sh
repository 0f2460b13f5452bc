#!/usr/bin/env bash
# Benchmark comparison: catalog (Redis / Redis with an L1 / in-process store / --no-cache), the seed baseline
# and the floor (axum + one redis-rs GET per request), all on this machine, one at a time,
# driven by the same `loadgen compare` run. Results go to $OUT (default docs/bench).
#
# Usage: scripts/bench.sh [hot|zipf-db|all]     (default: all)
# Env:   DURATION=10s WARMUP=5s CONNS=64 OUT=docs/bench
#        PEERS_SRC=../shared/peers  PEERS=../peers-run (a writable copy of the seed baseline)
#        SKIP_SEED=1 / SKIP_CATALOG=1 to leave those targets out.
#
# Every service listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCENARIO=${1:-all}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-5s}
CONNS=${CONNS:-64}
OUT=${OUT:-$ROOT/docs/bench}
PEERS_SRC=${PEERS_SRC:-$ROOT/../shared/peers}
PEERS=${PEERS:-$ROOT/../peers-run}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REDIS_PORT=${REDIS_PORT:-6391}
SEED_PORT=3100
FLOOR_PORT=3200
CAT_REDIS_PORT=3201 CAT_MEM_PORT=3202 CAT_NOCACHE_PORT=3203 CAT_L1_PORT=3204
CAT_REDIS_DB_PORT=3211 CAT_NOCACHE_DB_PORT=3213

WORK=$(mktemp -d /tmp/aside-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  echo "logs kept in $WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"

say() { printf '\n== %s\n' "$*" >&2; }

# Waits (at most 30 s) until GET $1 answers.
wait_http() {
  for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

# start NAME LOGFILE CMD... : starts a background process and records its pid in PID_<NAME>.
start() {
  local name=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_$name" '%s' "$pid"
}

need() { command -v "$1" >/dev/null || { echo "bench.sh needs $1 ($2)" >&2; exit 1; }; }
need redis-server "apt-get install redis-server"
need curl "apt-get install curl"
if [ -z "${SKIP_SEED:-}" ]; then
  need node "Node 20+, for the seed baseline; or SKIP_SEED=1"
  need npm "for the seed baseline; or SKIP_SEED=1"
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 \
    || { echo "bench.sh needs PostgreSQL server binaries (apt-get install postgresql) for the seed, or SKIP_SEED=1" >&2; exit 1; }
fi

REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes')"
say "building release binaries (tree at $REV)"
cargo build --release -p loadgen --bin loadgen --example floor
LOADGEN=$TARGET_DIR/release/loadgen
FLOOR=$TARGET_DIR/release/examples/floor
CATALOG=
if [ -z "${SKIP_CATALOG:-}" ]; then
  if cargo build --release -p catalog && "$TARGET_DIR/release/catalog" serve --help >/dev/null 2>&1; then
    CATALOG=$TARGET_DIR/release/catalog
  else
    echo "warning: catalog does not build or has no 'serve' yet; its targets are left out" >&2
  fi
fi

say "private redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_URL_PRIVATE=redis://127.0.0.1:$REDIS_PORT

SEED_OK=
if [ -z "${SKIP_SEED:-}" ]; then
  say "seed baseline from $PEERS"
  if [ ! -d "$PEERS" ]; then
    cp -r "$PEERS_SRC" "$PEERS" && chmod -R u+w "$PEERS"
  fi
  (cd "$PEERS" && ./services.sh start)
  [ -d "$PEERS/seed-node/node_modules" ] || (cd "$PEERS/seed-node" && npm install --no-audit --no-fund)
  (cd "$PEERS" && ./services.sh seed)
  SEED_OK=1
fi

# catalog_serve NAME PORT [extra flags]: one catalog with its own SQLite file.
catalog_serve() {
  local name=$1 port=$2; shift 2
  start "$name" "$WORK/$name.log" env -u REDIS_URL -u DATABASE_URL -u CATALOG_LISTEN \
    "$CATALOG" serve --listen "127.0.0.1:$port" --database-url "sqlite://$WORK/$name.db" "$@"
  wait_http "http://127.0.0.1:$port/healthz"
}

# Prints a command with the build and repo directories left out, for the results file.
show_cmd() { printf '%s ' "$@" | sed -e "s#$TARGET_DIR/release/##g" -e "s#$ROOT/##g"; echo; }

# run_compare FILE_STEM LOADGEN_ARGS... : runs loadgen compare and keeps table, JSON and plot.
run_compare() {
  local stem=$1; shift
  say "loadgen compare -> $OUT/$stem.{md,json,png}"
  local cmd=("$LOADGEN" compare "$@" -c "$CONNS" -d "$DURATION" --warmup "$WARMUP" --prefill
    --save "$OUT/$stem.json" --plot "$OUT/$stem.png")
  {
    echo "# $stem"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg), tree at $REV"
    echo
    echo '```'
    show_cmd "${cmd[@]}"
    echo '```'
    echo
    "${cmd[@]}"
  } | tee "$OUT/$stem.md"
}

if [ "$SCENARIO" = hot ] || [ "$SCENARIO" = all ]; then
  say "hot reads: 1000 warm ids, uniform, GET only"
  TARGETS=() PIDARGS=()
  if [ -n "$SEED_OK" ]; then
    start seed "$WORK/seed.log" env -C "$PEERS/seed-node" PORT=$SEED_PORT node server.js
    wait_http "http://127.0.0.1:$SEED_PORT/stats"
    TARGETS+=(--target "seed=http://127.0.0.1:$SEED_PORT" --id-format-of "seed={}")
    PIDARGS+=(--pid "seed=$PID_seed")
  fi
  start floor "$WORK/floor.log" "$FLOOR" --listen "127.0.0.1:$FLOOR_PORT" --redis-url "$REDIS_URL_PRIVATE" --ids 1000
  for _ in $(seq 300); do grep -q listening "$WORK/floor.log" && break; sleep 0.1; done
  TARGETS+=(--target "floor=http://127.0.0.1:$FLOOR_PORT")
  PIDARGS+=(--pid "floor=$PID_floor")
  if [ -n "$CATALOG" ]; then
    catalog_serve catalog_redis $CAT_REDIS_PORT --redis-url "$REDIS_URL_PRIVATE" --seed-products 10000
    # Redis with an in-process L1 in front (its own namespace, so it starts cold like the others).
    catalog_serve catalog_l1 $CAT_L1_PORT --redis-url "$REDIS_URL_PRIVATE" --seed-products 10000 \
      --cache-namespace catalog-l1 --l1-capacity 20000
    catalog_serve catalog_memory $CAT_MEM_PORT --seed-products 10000
    catalog_serve catalog_nocache $CAT_NOCACHE_PORT --no-cache --seed-products 10000
    TARGETS+=(--target "catalog-redis=http://127.0.0.1:$CAT_REDIS_PORT"
              --target "catalog-l1=http://127.0.0.1:$CAT_L1_PORT"
              --target "catalog-memory=http://127.0.0.1:$CAT_MEM_PORT"
              --target "catalog-nocache=http://127.0.0.1:$CAT_NOCACHE_PORT")
    PIDARGS+=(--pid "catalog-redis=$PID_catalog_redis" --pid "catalog-l1=$PID_catalog_l1"
              --pid "catalog-memory=$PID_catalog_memory" --pid "catalog-nocache=$PID_catalog_nocache")
  fi
  BASE=floor; [ -n "$SEED_OK" ] && BASE=seed
  run_compare hot "${TARGETS[@]}" "${PIDARGS[@]}" --baseline "$BASE" --ids 1000 --mix get=100
fi

if [ -n "$CATALOG" ] && { [ "$SCENARIO" = zipf-db ] || [ "$SCENARIO" = all ]; }; then
  say "slow database: --db-latency-ms 20, Zipf(1.0) over 10,000 ids"
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  catalog_serve catalog_redis_db20 $CAT_REDIS_DB_PORT --redis-url "$REDIS_URL_PRIVATE" --seed-products 10000 --db-latency-ms 20
  catalog_serve catalog_nocache_db20 $CAT_NOCACHE_DB_PORT --no-cache --seed-products 10000 --db-latency-ms 20
  # Prefill reads each of the 10,000 ids once first, so this measures the steady state; a
  # 10 s run from a cold cache still spends a few percent of its reads on first misses of
  # the Zipf tail (see the README).
  say "loadgen compare -> $OUT/zipf-db.{md,json,png}"
  cmd=("$LOADGEN" compare
    --target "nocache-db20=http://127.0.0.1:$CAT_NOCACHE_DB_PORT"
    --target "redis-db20=http://127.0.0.1:$CAT_REDIS_DB_PORT"
    --pid "nocache-db20=$PID_catalog_nocache_db20" --pid "redis-db20=$PID_catalog_redis_db20"
    --baseline nocache-db20 --ids 10000 --zipf 1.0 --mix get=100
 -c "$CONNS" -d "$DURATION" --warmup "$WARMUP" --prefill
    --save "$OUT/zipf-db.json" --plot "$OUT/zipf-db.png")
  {
    echo "# zipf-db"; echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg), tree at $REV"; echo
    echo '```'; show_cmd "${cmd[@]}"; echo '```'; echo
    "${cmd[@]}"
  } | tee "$OUT/zipf-db.md"
fi
