#!/usr/bin/env bash
# Runs schemathesis, every check on, against a catalog built from this tree (debug unless
# CATALOG_BIN names another binary), on an in-memory SQLite database and the in-process
# cache, on a free local port. Bounded: --max-examples per operation (SCHEMATHESIS_EXAMPLES,
# default 40) and a fixed seed, so a run takes a minute or two and repeats itself.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || pip install --quiet schemathesis \
  || pip install --quiet --break-system-packages schemathesis
bin=${CATALOG_BIN:-${CARGO_TARGET_DIR:-target}/debug/catalog}
[ -n "${CATALOG_BIN:-}" ] || cargo build --quiet -p catalog
log=$(mktemp)
"$bin" serve --listen 127.0.0.1:0 --database-url sqlite::memory: --redis-url "" \
  --seed-products 50 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q '^listening on ' "$log" && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$log")
[ -n "$base" ] || { cat "$log"; echo "catalog did not start"; exit 1; }
schemathesis --config-file crates/catalog/schemathesis.toml run "$base/openapi.json" \
  --checks all \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --request-timeout 10 \
  --generation-database none \
  "$@"
