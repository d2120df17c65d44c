#!/usr/bin/env bash
# Read/write benchmark against PostgreSQL with 1 or 2 `coffer server` nodes on one database.
#
#   bash scripts/bench-postgres.sh [NODES] [DURATION] [EXTRA coffer bench ARGS...]
#
# Builds the release binary, makes a fresh database owned by a non-superuser role (so the
# row-level security policies apply, as in production), starts NODES dev-mode servers on
# 127.0.0.1 and runs one `coffer bench` per node at the same time. With two nodes each bench
# uses half the connections; add their req/s for the total.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-1}
DURATION=${2:-10}
shift $(( $# > 2 ? 2 : $# )) || true
PG=${COFFER_BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
WORK=${COFFER_BENCH_DIR:-/tmp/coffer-bench-pg}

# COFFER_BIN: measure another build (e.g. an older commit's) with the same procedure.
if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --release --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/release/coffer}
# COFFER_BENCH_BIN: run the load with another build's `coffer bench` (the servers stay BIN).
BENCH_BIN=${COFFER_BENCH_BIN:-$BIN}

pkill -f "coffer server --dev --data-dir $WORK" 2>/dev/null || true
rm -rf "$WORK" && mkdir -p "$WORK"
psql "$PG" -qc "DROP DATABASE IF EXISTS coffer_bench WITH (FORCE)"
psql "$PG" -qc "DROP ROLE IF EXISTS coffer_bench"
psql "$PG" -qc "CREATE ROLE coffer_bench LOGIN"
psql "$PG" -qc "CREATE DATABASE coffer_bench OWNER coffer_bench"
export COFFER_DATABASE_URL=${COFFER_BENCH_URL:-postgres://coffer_bench@127.0.0.1:5432/coffer_bench}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for n in $(seq 1 "$NODES"); do
  port=$((8300 + n))
  "$BIN" server --dev --data-dir "$WORK/node$n" --listen "127.0.0.1:$port" \
    >"$WORK/node$n.log" 2>&1 &
  pids+=($!)
  # The first node creates the schema, the dev key and the bootstrap account; the others
  # share its dev key file (dev mode keeps the root key in the data directory).
  for _ in $(seq 1 100); do
    grep -q "listening" "$WORK/node$n.log" 2>/dev/null && break
    sleep 0.2
  done
  if [ "$n" = 1 ] && [ "$NODES" -gt 1 ]; then
    for m in $(seq 2 "$NODES"); do
      mkdir -p "$WORK/node$m"
      cp "$WORK/node1/dev-root.key" "$WORK/node$m/" 2>/dev/null || true
    done
  fi
done
password=$(awk '$1 == "password:" {print $2; exit}' "$WORK/node1.log")
for n in $(seq 1 "$NODES"); do
  port=$((8300 + n))
  export COFFER_ADDR=https://127.0.0.1:$port COFFER_CACERT=$WORK/node$n/tls/ca.pem
  HOME=$WORK/home$n "$BIN" login -u admin --password-stdin <<<"$password" >/dev/null
done
# Start from a fresh checkpoint, so one does not fall into the measurement by chance.
psql "$PG" -qc "CHECKPOINT"
for n in $(seq 1 "$NODES"); do
  port=$((8300 + n))
  COFFER_ADDR=https://127.0.0.1:$port COFFER_CACERT=$WORK/node$n/tls/ca.pem HOME=$WORK/home$n \
    "$BENCH_BIN" bench --duration "$DURATION" "$@" >"$WORK/bench$n.txt" 2>&1 &
  bench[$n]=$!
done
for n in $(seq 1 "$NODES"); do
  wait "${bench[$n]}" || true
  echo "== node $n"
  cat "$WORK/bench$n.txt"
done
