#!/usr/bin/env bash
# Audit bytes on disk per audited secret read (issue 24's measure): loads ORGS organisations
# with 100 values each into a fresh database, reads at random for DURATION seconds (every
# read appends one event), then divides the on-disk size of the audit tables and their
# indexes by the number of events they hold. Runs `scripts/bench-scale.sh` for the load and
# the reads, so the same COFFER_BIN / COFFER_BENCH_* variables apply.
#
#   bash scripts/bench-audit-size.sh sqlite|postgres [ORGS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${1:?sqlite or postgres}
ORGS=${2:-10}
DURATION=${3:-20}
export COFFER_BENCH_DIR=${COFFER_BENCH_DIR:-/tmp/coffer-bench-audit-size}
export COFFER_BENCH_DB=${COFFER_BENCH_DB:-coffer_audit_size}
export COFFER_BENCH_PORT=${COFFER_BENCH_PORT:-8321}

bash scripts/bench-scale.sh "$BACKEND" "$ORGS" "$((ORGS * 100))" "$DURATION" | grep -E '^│ read|^load'

# Every relation that grows with the log: events, their indexes, chain heads, signed heads.
if [ "$BACKEND" = postgres ]; then
  # As the administrator: row-level security hides every organisation's rows from the
  # service's own role outside a request.
  url=postgres://postgres@127.0.0.1:5432/$COFFER_BENCH_DB
  psql "$url" -qc "CHECKPOINT" 2>/dev/null || true
  read -r events bytes < <(psql "$url" -Atc "
    SELECT (SELECT count(*) FROM audit_events) + (SELECT count(*) FROM audit_log),
           sum(pg_total_relation_size(c.oid))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE 'audit%'" |
    tr '|' ' ')
else
  db=$COFFER_BENCH_DIR/data/coffer.db
  command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }
  # The log's pages are counted once they are in the database file.
  sqlite3 -cmd ".timeout 10000" "$db" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
  read -r events bytes < <(sqlite3 -cmd ".timeout 10000" -separator ' ' "$db" "
    SELECT (SELECT count(*) FROM audit_events) + (SELECT count(*) FROM audit_log), sum(pgsize) FROM dbstat
    WHERE name IN (SELECT name FROM sqlite_schema WHERE tbl_name LIKE 'audit%')")
fi
echo "audit: $events events, $bytes bytes on disk (tables and indexes): $((bytes / events)) bytes per event"
