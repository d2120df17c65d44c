#!/usr/bin/env bash
# The OpenAPI contract, checked from outside: schemathesis (PyPI) generates requests from
# the document the server serves (/v1/openapi.json) and checks every answer against it
# (status codes, content types, response schemas, bad input refused, valid input accepted,
# stateful links). Runs against a debug `coffer server --dev` on 127.0.0.1 with an Owner
# token, and fails on any finding. `.ci/run` calls it; it takes a few minutes.
#
#   bash scripts/api-contract.sh [MAX_EXAMPLES [ST_ARGS...]]  # per operation, default 100
#
# Further arguments go to `st run` (e.g. `--include-path-regex rollback --phases coverage`).
#
# The generated cases are the same on every run (deterministic), so that a finding is a
# change in the server or the document, not luck; COFFER_CONTRACT_SEED=N explores others.
# COFFER_BIN: the binary to run (default: build the debug binary). Work directory
# COFFER_CONTRACT_DIR (default target/api-contract), port COFFER_CONTRACT_PORT (8340).
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-100}
shift || true
WORK=${COFFER_CONTRACT_DIR:-$PWD/target/api-contract}
PORT=${COFFER_CONTRACT_PORT:-8340}
SCHEMATHESIS_VERSION=4.32.5

if ! st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/debug/coffer}

rm -rf "$WORK" && mkdir -p "$WORK"
# Schemathesis sends many logins (and wrong ones): the per-address throttle would answer
# them 429 (which the document lists) and hide the rest of the login route's answers.
COFFER_AUTH__LOGIN_RATE_PER_MINUTE=1000000 \
  "$BIN" server --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  grep -q "listening" "$WORK/server.log" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.2
done
password=$(awk '$1 == "password:" {print $2; exit}' "$WORK/server.log")
base=https://127.0.0.1:$PORT
ca=$WORK/data/tls/ca.pem
token=$(python3 - "$base" "$ca" "$password" <<'PY'
import json, ssl, sys, urllib.request
base, ca, password = sys.argv[1:]
req = urllib.request.Request(
    base + "/v1/auth/login",
    data=json.dumps({"username": "admin", "password": password}).encode(),
    headers={"content-type": "application/json"},
)
ctx = ssl.create_default_context(cafile=ca)
print(json.load(urllib.request.urlopen(req, context=ctx))["token"])
PY
)

# Every operation is checked, in passes ordered so that none ends what a later one needs:
#  1. everything except the operations below (with the stateful phase: links followed);
#  2. changing and removing members (a stateful run can invite a second Owner and then
#     demote the run's own);
#  3. those that end the run's session or server: sys init/unseal/seal/rekey/migrate-seal
#     (sealing or re-keying stops every later request), auth logout, password,
#     sessions/{id}, switch (they end or replace the session), auth mfa/* (MFA on makes the
#     next login a two-step one);
#  4. DELETE /v1/org (deletes the organisation the token acts in) and PUT /v1/org/settings
#     (`require_mfa` refuses the run's own password-only session).
# Once the server is sealed or the session ended, answers are the documented 503 or 401.
# ignored_auth is checked; the routes that need no token (health, seal status, login,
# invitations/accept, oidc, openapi) say so in the document, logout takes one optionally.
exclude='^/v1/(sys/(seal|rekey|migrate-seal|init|unseal)|auth/(logout|password|sessions/\{id\}|mfa/.*|switch))$'
members='^/v1/org/members/\{username\}$'
# --request-retries: twice in about fifteen runs a request ended in a TLS EOF before any
# answer (not reproduced with the same seed; recorded on issue 18). A retry repeats only a
# request that got no answer at all; every answer is still checked.
if [ -n "${COFFER_CONTRACT_SEED:-}" ]; then
  generation=(--seed "$COFFER_CONTRACT_SEED" --generation-database none)
else
  generation=(--generation-deterministic)
fi
contract() {
  st run "$base/v1/openapi.json" \
    --tls-verify "$ca" \
    --header "Authorization: Bearer $token" \
    --checks all \
    --max-examples "$EXAMPLES" \
    "${generation[@]}" \
    --workers 1 \
    --request-retries 2 \
    --report junit,vcr --report-dir "$WORK/report" \
    "$@"
}
# (st takes one regex per filter option: the second pass needs no exclusion.)
contract --exclude-path-regex "($exclude)|($members)" --exclude-operation-id delete_org \
  --exclude-operation-id update_settings "$@"
contract --include-path-regex "$members" "$@"
# Last, the operations that end the run's session, organisation or server: checked the
# same way, each answer against the document (once the server is sealed or the session
# ended, the documented 503 or 401).
# (No links lead between these: without the stateful phase.)
contract --include-path-regex "$exclude" --phases examples,coverage,fuzzing "$@"
contract --include-operation-id delete_org --include-operation-id update_settings \
  --phases examples,coverage,fuzzing "$@"
