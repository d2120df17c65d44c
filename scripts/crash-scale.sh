#!/usr/bin/env bash
# Crash test at scale (not part of the default test run): `kill -9` of a real server under
# a mixed read/write load, ROUNDS times (default 20) on the same data, on SQLite and then on
# PostgreSQL; after each restart every answered request has its audit event, every
# acknowledged write is there, a write applied without an answer came with its event, and
# the chain verifies. Prints the figures of each backend.
#
#   bash scripts/crash-scale.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
for backend in sqlite postgres; do
  echo "== $backend, $ROUNDS rounds"
  COFFER_TEST_BACKEND=$backend COFFER_CRASH_ROUNDS=$ROUNDS \
    cargo test --locked -p coffer-cli --test it crash -- --nocapture 2>&1 |
    grep -E "crash figures|panicked|test result"
done
