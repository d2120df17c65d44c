#!/usr/bin/env bash
# Scale benchmark: ORGS organisations holding VALUES values in all, loaded straight into a
# fresh database (`coffer bench-load`), then random reads across all of them at 16
# connections through one `coffer server`, each read with its organisation's API key.
# Prints the load time, the read table, the server's memory (VmRSS now, VmHWM peak; RssAnon is
# its own memory, RssFile the database pages it maps, which the OS may drop) and
# the database's size.
#
#   bash scripts/bench-scale.sh sqlite|postgres [ORGS] [VALUES] [DURATION] [bench args...]
#
# COFFER_BIN measures another build; without it the release binary is built first.
# COFFER_BENCH_REUSE=1 skips the load and reads the database an earlier run left (same
# COFFER_BENCH_DIR and backend), e.g. to alternate two builds on one data set.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${1:?sqlite or postgres}
ORGS=${2:-10000}
VALUES=${3:-1000000}
DURATION=${4:-10}
shift $(( $# > 4 ? 4 : $# )) || true
WORK=${COFFER_BENCH_DIR:-/tmp/coffer-bench-scale}
PORT=${COFFER_BENCH_PORT:-8320}
PG=${COFFER_BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
# The PostgreSQL database (and its owner role) of this run.
DB=${COFFER_BENCH_DB:-coffer_scale}

if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --release --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/release/coffer}

pkill -f "coffer server --dev --data-dir $WORK" 2>/dev/null || true
unset COFFER_DATABASE_URL
REUSE=${COFFER_BENCH_REUSE:-0}
if [ "$REUSE" = 1 ]; then
  [ -f "$WORK/targets.tsv" ] || { echo "nothing to reuse in $WORK" >&2; exit 1; }
  [ "$BACKEND" = postgres ] && export COFFER_DATABASE_URL=postgres://$DB@127.0.0.1:5432/$DB
else
  rm -rf "$WORK" && mkdir -p "$WORK"
  if [ "$BACKEND" = postgres ]; then
    psql "$PG" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    psql "$PG" -qc "DROP ROLE IF EXISTS $DB"
    psql "$PG" -qc "CREATE ROLE $DB LOGIN"
    psql "$PG" -qc "CREATE DATABASE $DB OWNER $DB"
    export COFFER_DATABASE_URL=postgres://$DB@127.0.0.1:5432/$DB
  fi

  start=$(date +%s)
  "$BIN" bench-load --data-dir "$WORK/data" --orgs "$ORGS" --values "$VALUES" --out "$WORK/targets.tsv" 2>"$WORK/load.log"
  echo "load: $(tail -n 1 "$WORK/load.log") ($(( $(date +%s) - start )) s)"
  if [ "$BACKEND" = postgres ]; then
    # What autovacuum would do on its own after a bulk load: statistics for the planner.
    PGOPTIONS="-c client_min_messages=error" psql "$COFFER_DATABASE_URL" -qc "VACUUM ANALYZE"
  fi
fi

"$BIN" server --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  grep -q "listening" "$WORK/server.log" 2>/dev/null && break
  sleep 0.2
done
export COFFER_ADDR=https://127.0.0.1:$PORT COFFER_CACERT=$WORK/data/tls/ca.pem HOME=$WORK/home
"$BIN" bench --targets "$WORK/targets.tsv" --duration "$DURATION" --connections 16 "$@"
grep -E '^(VmRSS|VmHWM|RssAnon|RssFile)' "/proc/$server/status" | tr -s ' \t' ' ' | sed 's/^/server /'
if [ "$BACKEND" = postgres ]; then
  echo "database: $(psql "$COFFER_DATABASE_URL" -Atc "SELECT pg_size_pretty(pg_database_size('$DB'))")"
else
  echo "database: $(du -sh "$WORK/data" | cut -f1) (data directory)"
fi
