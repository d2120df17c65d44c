#!/usr/bin/env bash
# Archiving the audit log at scale (issue 24): a fresh database with ORGS organisations and
# EVENTS audited secret reads spread over their chains (`coffer bench-load --audit-events`),
# then
#   1. `coffer audit archive` of everything, alone: wall time, events/s, peak RSS (GNU time)
#      and the segment's size;
#   2. `coffer audit verify --file` of the segment, offline: the same figures;
#   3. `coffer audit prune`: wall time;
#   4. on the original (1-3 ran on a copy): reads through a server for DURATION seconds,
#      then again while the same archive runs next to them.
# Release build; COFFER_BIN to use another binary; COFFER_BENCH_NICE=19 runs the archive of
# step 4 at the lowest CPU priority (as an operator would from cron), COFFER_BENCH_RATE=N
# paces it to N events per second (`--rate`).
#
#   bash scripts/bench-archive.sh sqlite|postgres [EVENTS] [ORGS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${1:?sqlite or postgres}
EVENTS=${2:-10000000}
ORGS=${3:-10}
DURATION=${4:-15}
WORK=${COFFER_BENCH_DIR:-/tmp/coffer-bench-archive}
PORT=${COFFER_BENCH_PORT:-8322}
PG=${COFFER_BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
DB=${COFFER_BENCH_DB:-coffer_archive}
NICE=${COFFER_BENCH_NICE:-0}
RATE=${COFFER_BENCH_RATE:-}

if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --release --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/release/coffer}
unset COFFER_DATABASE_URL
rm -rf "$WORK" && mkdir -p "$WORK"
if [ "$BACKEND" = postgres ]; then
  psql "$PG" -qc "DROP DATABASE IF EXISTS ${DB}_copy WITH (FORCE)"
  psql "$PG" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  psql "$PG" -qc "DROP ROLE IF EXISTS $DB"
  psql "$PG" -qc "CREATE ROLE $DB LOGIN"
  psql "$PG" -qc "CREATE DATABASE $DB OWNER $DB"
  export COFFER_DATABASE_URL=postgres://$DB@127.0.0.1:5432/$DB
fi

start=$(date +%s)
"$BIN" bench-load --data-dir "$WORK/data" --orgs "$ORGS" --values "$((ORGS * 100))" \
  --audit-events "$EVENTS" --concurrency 64 --out "$WORK/targets.tsv" 2>"$WORK/load.log"
echo "load: $(tail -n 1 "$WORK/load.log") ($(( $(date +%s) - start )) s)"
[ "$BACKEND" = postgres ] && PGOPTIONS="-c client_min_messages=error" psql "$COFFER_DATABASE_URL" -qc "VACUUM ANALYZE"

# GNU time's wall clock and peak RSS of one command.
timed() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" ||
    { cat "$WORK/$label.err" >&2; exit 1; }
  read -r secs kib <"$WORK/time.txt"
  echo "$label: ${secs}s, peak RSS $((kib / 1024)) MiB"
}

# 1-3 on a copy, so that 4 archives the same events.
ORIGINAL=${COFFER_DATABASE_URL:-}
if [ "$BACKEND" = postgres ]; then
  psql "$PG" -qc "DROP DATABASE IF EXISTS ${DB}_copy WITH (FORCE)"
  psql "$PG" -qc "CREATE DATABASE ${DB}_copy TEMPLATE $DB OWNER $DB"
  export COFFER_DATABASE_URL=postgres://$DB@127.0.0.1:5432/${DB}_copy
fi
cp -a "$WORK/data" "$WORK/copy"
cut=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
timed archive "$BIN" audit archive --dev --data-dir "$WORK/copy" --before "$cut" --out "$WORK/seg1.ndjson"
events=$(grep -oE 'Archived [0-9]+' "$WORK/archive.out" | grep -oE '[0-9]+')
echo "archive: $events events, $(awk -v e="$events" -v s="$secs" 'BEGIN { printf "%.0f", e / s }') events/s, segment $(du -h "$WORK/seg1.ndjson" | cut -f1) ($(( $(stat -c %s "$WORK/seg1.ndjson") / events )) bytes per event)"
timed verify "$BIN" audit verify --file "$WORK/seg1.ndjson"
echo "verify: $(awk -v e="$events" -v s="$secs" 'BEGIN { printf "%.0f", e / s }') events/s"
timed prune "$BIN" audit prune --dev --data-dir "$WORK/copy" --file "$WORK/seg1.ndjson"
echo "prune: $(cat "$WORK/prune.out")"
"$BIN" --json audit status --dev --data-dir "$WORK/copy" | tr -d '\n'; echo
rm -rf "$WORK/copy" "$WORK/seg1.ndjson"
if [ "$BACKEND" = postgres ]; then
  psql "$PG" -qc "DROP DATABASE IF EXISTS ${DB}_copy WITH (FORCE)"
  export COFFER_DATABASE_URL=$ORIGINAL
fi

"$BIN" server --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  grep -q "listening" "$WORK/server.log" 2>/dev/null && break
  sleep 0.2
done
export COFFER_ADDR=https://127.0.0.1:$PORT COFFER_CACERT=$WORK/data/tls/ca.pem HOME=$WORK/home
"$BIN" bench --targets "$WORK/targets.tsv" --duration "$DURATION" --connections 16 | grep -E '^│ read' | sed 's/^/reads alone:        /'
( nice -n "$NICE" "$BIN" audit archive --dev --data-dir "$WORK/data" --before "$cut" --out "$WORK/seg2.ndjson" ${RATE:+--rate "$RATE"} >"$WORK/archive2.out" 2>&1; date +%s.%N >"$WORK/archive2.end" ) &
archiver=$!
sleep 1
"$BIN" bench --targets "$WORK/targets.tsv" --duration "$DURATION" --connections 16 | grep -E '^│ read' | sed "s/^/reads with archive (nice $NICE, rate ${RATE:-unlimited}): /"
reads_end=$(date +%s.%N)
wait $archiver
echo "archive during reads: $(head -n 1 "$WORK/archive2.out") (still running when the reads ended: $(awk -v a="$(cat "$WORK/archive2.end")" -v r="$reads_end" 'BEGIN { print (a > r) ? "yes" : "no" }'))"
