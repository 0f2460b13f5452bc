#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo fuzz, libFuzzer) for SECONDS each (default 30),
# starting from its committed seed corpus; fails on the first crash, with the input that
# caused it under fuzz/artifacts/<target>/. Installs cargo-fuzz if it is missing.
#
# No sanitizer by default (FUZZ_SANITIZER=address, with FUZZ_TOOLCHAIN=nightly, for one):
# the code under test forbids `unsafe`, so a sanitizer would mostly slow the runs, and
# without one the default (stable) toolchain builds the targets. FUZZ_TARGETS="a b" runs
# only those. New inputs the fuzzer finds go to a scratch directory, not into the committed
# corpora. Builds use 16 codegen units (FUZZ_CODEGEN_UNITS; cargo fuzz's default is 1, which
# runs faster and builds far slower) into fuzz/target (FUZZ_TARGET_DIR, to keep it elsewhere);
# FUZZ_DEV=1 builds the dev profile instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=()
[ -z "${FUZZ_TOOLCHAIN:-}" ] || toolchain=("+$FUZZ_TOOLCHAIN")
flags=(-s "${FUZZ_SANITIZER:-none}" --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
# FUZZ_DEV=1: the dev profile (debug assertions on, optimised less): builds in a fraction of
# the release build's time, runs slower; what CI uses to keep its time bounded.
[ -z "${FUZZ_DEV:-}" ] || flags+=(--dev)
[ -z "${FUZZ_TARGET_DIR:-}" ] || flags+=(--target-dir "$FUZZ_TARGET_DIR")
targets=${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list)}
start=$(date +%s)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if ! cargo "${toolchain[@]}" fuzz build "${flags[@]}" >"$scratch/build.log" 2>&1; then
  grep -v '^ *Compiling ' "$scratch/build.log"
  echo "fuzz: the targets did not build"
  exit 1
fi
echo "fuzz: built in $(($(date +%s) - start)) s"
for t in $targets; do
  mkdir -p "$scratch/$t"
  echo "fuzz: $t for $seconds s"
  if ! cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      >"$scratch/$t.log" 2>&1; then
    tail -60 "$scratch/$t.log"
    echo "fuzz: $t crashed (the input is under fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$scratch/$t.log" | tail -2 || true
done
echo "fuzz: every target ran ${seconds} s without a crash ($(($(date +%s) - start)) s in all)"
