#!/usr/bin/env bash
# Two catalogs side by side, A and B, each on a PostgreSQL database of its own and a shared
# private Redis (namespaces `a` and `b`), driven one after the other by the same
# `loadgen compare` run (B is the baseline of the ratios). Results go to $OUT/$NAME.{md,json}.
#
# Env:  NAME=ab  A_NAME=a A_BIN=target/release/catalog A_FLAGS=  B_NAME=b B_BIN=... B_FLAGS=
#       MIX=get=100 IDS=1000 ZIPF= (Zipf exponent; uniform when empty) PAGES=10 SEED=1000
#       DURATION=10s WARMUP=3s CONNS=16 DB_LATENCY_MS=0 OUT=docs/bench
#       PG=postgres://postgres@127.0.0.1:5432 (a server where databases may be created)
# A_BIN and B_BIN default to this tree's release build (made here); give another build's
# binary to compare two versions of the code.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NAME=${NAME:-ab}
A_NAME=${A_NAME:-a} B_NAME=${B_NAME:-b}
A_BIN=${A_BIN:-$TARGET_DIR/release/catalog} B_BIN=${B_BIN:-$TARGET_DIR/release/catalog}
A_FLAGS=${A_FLAGS:-} B_FLAGS=${B_FLAGS:-}
MIX=${MIX:-get=100} IDS=${IDS:-1000} ZIPF=${ZIPF:-} PAGES=${PAGES:-10} SEED=${SEED:-1000}
DURATION=${DURATION:-10s} WARMUP=${WARMUP:-3s} CONNS=${CONNS:-16} DB_LATENCY_MS=${DB_LATENCY_MS:-0}
OUT=${OUT:-$ROOT/docs/bench}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS_PORT=${REDIS_PORT:-6394}
WORK=$(mktemp -d /tmp/aside-ab.XXXXXX)
PIDS=()
DBS=("ab_a_$$" "ab_b_$$")
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  for db in "${DBS[@]}"; do
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
for db in "${DBS[@]}"; do psql -q "$PG/postgres" -c "CREATE DATABASE $db"; done
wait_http() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
# shellcheck disable=SC2086 # the flags are words
"$A_BIN" serve --listen 127.0.0.1:3301 --database-url "$PG/${DBS[0]}" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --cache-namespace a --seed-products "$SEED" --db-latency-ms "$DB_LATENCY_MS" $A_FLAGS >"$WORK/a.log" 2>&1 &
PIDS+=($!); APID=$!
# shellcheck disable=SC2086
"$B_BIN" serve --listen 127.0.0.1:3302 --database-url "$PG/${DBS[1]}" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --cache-namespace b --seed-products "$SEED" --db-latency-ms "$DB_LATENCY_MS" $B_FLAGS >"$WORK/b.log" 2>&1 &
PIDS+=($!); BPID=$!
wait_http http://127.0.0.1:3301/healthz && wait_http http://127.0.0.1:3302/healthz
ZIPF_ARG=()
[ -n "$ZIPF" ] && ZIPF_ARG=(--zipf "$ZIPF")
"$TARGET_DIR/release/loadgen" compare \
  --target "$A_NAME=http://127.0.0.1:3301" --target "$B_NAME=http://127.0.0.1:3302" --baseline "$B_NAME" \
  --pid "$A_NAME=$APID" --pid "$B_NAME=$BPID" \
  --mix "$MIX" --ids "$IDS" "${ZIPF_ARG[@]}" --pages "$PAGES" --connections "$CONNS" \
  --duration "$DURATION" --warmup "$WARMUP" --pause 2s --quiet --save "$OUT/$NAME.json" | tee "$WORK/compare.txt"
{
  echo "# $NAME"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), tree at $REV: \`NAME=$NAME scripts/ab.sh\`: $A_NAME (\`$A_BIN $A_FLAGS\`)"
  echo "against $B_NAME (\`$B_BIN $B_FLAGS\`), mix $MIX over $IDS ids${ZIPF:+ (Zipf $ZIPF)}, $CONNS connections,"
  echo "$DURATION after $WARMUP of warm-up, $SEED products seeded, db latency $DB_LATENCY_MS ms;"
  echo "PostgreSQL and one Redis, everything on this machine."
  echo
  echo '```'
  cat "$WORK/compare.txt"
  echo '```'
} >"$OUT/$NAME.md"
echo "wrote $OUT/$NAME.md"
