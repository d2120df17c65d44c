#!/usr/bin/env bash
# Run every libFuzzer target in fuzz/ for SECONDS (default 30) each, starting from the
# committed corpus. Needs the nightly toolchain; installs cargo-fuzz if missing. New
# inputs go to a temporary directory; a crash fails the run (its input is in
# fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^coffer-fuzz$')
cargo +nightly fuzz build --fuzz-dir fuzz
for t in $targets; do
  new=$(mktemp -d)
  echo "== fuzz $t (${SECONDS_EACH}s)"
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$new" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=1 2>&1 | tail -n 12
  rm -rf "$new"
done
