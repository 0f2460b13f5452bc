#!/usr/bin/env bash
# What the database change feed costs writers: the catalog on PostgreSQL and Redis with the
# feed (the default) and with --no-change-feed, each on a database of its own, driven one
# after the other by the same `loadgen compare` run of PUTs. Results go to $OUT/feed.md.
#
# Usage: scripts/feed-bench.sh       Env: DURATION=10s WARMUP=3s CONNS=16 OUT=docs/bench
#        PG=postgres://postgres@127.0.0.1:5432 (a server where databases may be created)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-16}
OUT=${OUT:-$ROOT/docs/bench}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS_PORT=${REDIS_PORT:-6394}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/aside-feed-bench.XXXXXX)
PIDS=()
SUFFIX=$$
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  for db in feed_on_$SUFFIX feed_off_$SUFFIX; do
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  echo "logs kept in $WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"
REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes')"
cargo build --release -p loadgen --bin loadgen
cargo build --release -p catalog
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
for db in feed_on_$SUFFIX feed_off_$SUFFIX; do psql -q "$PG/postgres" -c "CREATE DATABASE $db"; done
wait_http() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
"$TARGET_DIR/release/catalog" serve --listen 127.0.0.1:3301 --database-url "$PG/feed_on_$SUFFIX" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" --cache-namespace on >"$WORK/on.log" 2>&1 &
PIDS+=($!); ON=$!
"$TARGET_DIR/release/catalog" serve --listen 127.0.0.1:3302 --database-url "$PG/feed_off_$SUFFIX" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" --cache-namespace off --no-change-feed >"$WORK/off.log" 2>&1 &
PIDS+=($!); OFF=$!
wait_http http://127.0.0.1:3301/healthz && wait_http http://127.0.0.1:3302/healthz
"$TARGET_DIR/release/loadgen" compare \
  --target feed=http://127.0.0.1:3301 --target no-feed=http://127.0.0.1:3302 --baseline no-feed \
  --pid feed=$ON --pid no-feed=$OFF \
  --mix put=100 --ids 1000 --connections "$CONNS" --duration "$DURATION" --warmup "$WARMUP" \
  --pause 2s --quiet --save "$OUT/feed.json" | tee "$WORK/compare.txt"
{
  echo "# feed"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), tree at $REV: \`scripts/feed-bench.sh\`, PUTs only over 1000 ids,"
  echo "$CONNS connections, $DURATION after $WARMUP of warm-up; PostgreSQL and one Redis, both catalogs on this machine."
  echo
  echo '```'
  cat "$WORK/compare.txt"
  echo '```'
} >"$OUT/feed.md"
echo "wrote $OUT/feed.md"
