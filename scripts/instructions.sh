#!/usr/bin/env bash
# Instructions per hot read, counted by valgrind's callgrind: the floor (axum + one redis-rs
# GET per request) and the catalog with Redis, with Redis and an L1, and with the in-process
# store. Counts are of the service's own user-space code (the kernel's socket work, about half
# of a service's CPU time, is not counted), and they do not move with the load on the machine:
# the same binaries give the same counts, which makes this the steady yardstick for the
# engine's own cost on a busy or noisy machine. Results go to $OUT/instructions.md.
#
# Usage: scripts/instructions.sh          Env: OUT=docs/bench REQUESTS=10000 REDIS_PORT=6392
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/docs/bench}
REQUESTS=${REQUESTS:-10000}
REDIS_PORT=${REDIS_PORT:-6392}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/aside-instr.XXXXXX)
VPID=
cleanup() {
  [ -n "$VPID" ] && kill "$VPID" 2>/dev/null || true
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$OUT"

REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes')"
cargo build --release -p loadgen --bin loadgen --example floor
cargo build --release -p catalog
LOADGEN=$TARGET_DIR/release/loadgen
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS=redis://127.0.0.1:$REDIS_PORT

# count NAME PORT CMD...: starts CMD under callgrind, warms it up, counts REQUESTS hot reads.
count() {
  local name=$1 port=$2; shift 2
  # `env` execs valgrind (same pid), so the catalog sees none of the caller's settings.
  env -u REDIS_URL -u DATABASE_URL -u CATALOG_LISTEN \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" >"$WORK/$name.log" 2>&1 &
  VPID=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$port/products/p1" && break; sleep 0.2; done
  "$LOADGEN" run "x=http://127.0.0.1:$port" --ids 1000 --mix get=100 -c 16 --requests 3000 \
    --prefill --db-stats none >/dev/null
  callgrind_control -z "$VPID" >/dev/null
  "$LOADGEN" run "x=http://127.0.0.1:$port" --ids 1000 --mix get=100 -c 16 \
    --requests "$REQUESTS" --db-stats none --json >"$WORK/$name.json"
  callgrind_control -d "$VPID" >/dev/null
  kill "$VPID"; wait "$VPID" 2>/dev/null || true; VPID=
  local total
  total=$(callgrind_annotate "$WORK/$name.out".1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$name $((total / REQUESTS))" | tee -a "$WORK/counts"
}

catalog() {
  local name=$1 port=$2; shift 2
  count "$name" "$port" "$TARGET_DIR/release/catalog" serve --listen "127.0.0.1:$port" \
    --database-url "sqlite://$WORK/$name.db" --seed-products 2000 "$@"
}

count floor 3260 "$TARGET_DIR/release/examples/floor" --listen 127.0.0.1:3260 --redis-url "$REDIS" --ids 1000
# The hot path: the change feed off, since its background reads of the outbox (a fixed
# number per second) would be charged to reads that run fifty times slower under callgrind.
catalog catalog-redis 3261 --redis-url "$REDIS" --cache-namespace instr-redis --no-change-feed
catalog catalog-l1 3262 --redis-url "$REDIS" --cache-namespace instr-l1 --l1-capacity 20000 --no-change-feed
catalog catalog-memory 3263 --no-change-feed
# And with the feed on (the default), to show what those background reads add here.
catalog catalog-redis-feed 3264 --redis-url "$REDIS" --cache-namespace instr-feed

{
  echo "# instructions"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), tree at $REV: \`scripts/instructions.sh\`, $REQUESTS hot reads"
  echo "(1000 ids, 16 connections) per target after a warm-up, user-space instructions of the"
  echo "service process counted by callgrind."
  echo
  echo "| target | instructions per read | vs floor |"
  echo "| --- | ---: | ---: |"
  floor=$(awk '$1 == "floor" {print $2}' "$WORK/counts")
  while read -r name n; do
    printf '| %s | %s | %sx |\n' "$name" "$n" "$(awk -v n="$n" -v f="$floor" 'BEGIN {printf "%.2f", n / f}')"
  done <"$WORK/counts"
} | tee "$OUT/instructions.md"
