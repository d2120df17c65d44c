#!/usr/bin/env bash
# Read/write benchmark of one `coffer server` on its embedded default (SQLite), fresh data
# directory each run.
#
#   bash scripts/bench-sqlite.sh [DURATION] [EXTRA coffer bench ARGS...]
#
# COFFER_BIN measures another build (e.g. an older commit's) with the same procedure, so two
# builds can be alternated in one sitting; without it the release binary is built first.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
shift $(( $# > 0 ? 1 : 0 )) || true
WORK=${COFFER_BENCH_DIR:-/tmp/coffer-bench-sqlite}
PORT=${COFFER_BENCH_PORT:-8310}

if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --release --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/release/coffer}

pkill -f "coffer server --dev --data-dir $WORK" 2>/dev/null || true
rm -rf "$WORK" && mkdir -p "$WORK"
"$BIN" server --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening" "$WORK/server.log" 2>/dev/null && break
  sleep 0.2
done
password=$(awk '$1 == "password:" {print $2; exit}' "$WORK/server.log")
export COFFER_ADDR=https://127.0.0.1:$PORT COFFER_CACERT=$WORK/data/tls/ca.pem HOME=$WORK/home
"$BIN" login -u admin --password-stdin <<<"$password" >/dev/null
"$BIN" bench --duration "$DURATION" "$@"
