#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs and starts the real peers the suites talk
# to, then runs every test. README's test command and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."

# openssl: TLS protocol probes.
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
fi

# PostgreSQL: the machine's own cluster on 127.0.0.1:5432, started if down.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi

# SoftHSM2: the PKCS#11 token the HSM seal and key tests use. Tokens go to a fresh
# directory under target/, never the machine's own token store.
if ! command -v softhsm2-util >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2
fi
export SOFTHSM2_CONF="$PWD/target/softhsm/softhsm2.conf"
rm -rf target/softhsm && mkdir -p target/softhsm/tokens
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$PWD/target/softhsm/tokens" > "$SOFTHSM2_CONF"

# age: the standard tool must decrypt what Coffer encrypts to age recipients (archive
# segments), and its keys must work with Coffer.
if ! command -v age >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age
fi

# moto_server: AWS KMS on 127.0.0.1 for the KMS seal and key tests.
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi

# aiosmtpd: the SMTP server the mail tests deliver to.
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd
fi

# oidc-provider: the OpenID provider the OIDC tests get tokens from.
if [ ! -d tests/oidc-provider/node_modules/oidc-provider ]; then
  (cd tests/oidc-provider && npm ci --no-audit --no-fund --loglevel=error)
fi

# Test databases left by earlier runs (each test makes its own coffer_test_* database and role).
if command -v psql >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  for db in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc \
      "SELECT datname FROM pg_database WHERE datname LIKE 'coffer\_test\_%'"); do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE \"$db\" WITH (FORCE)" || true
  done
  for role in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc \
      "SELECT rolname FROM pg_roles WHERE rolname LIKE 'coffer\_test\_%'"); do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP ROLE IF EXISTS \"$role\"" || true
  done
fi

cargo test --workspace --locked "$@"
# The domain's integration tests and the end-to-end suites (API, identity, audit, CLI) once
# more, every service on PostgreSQL (the full run only; arguments select tests of the first
# run). Tests that look into the SQLite file stay on SQLite.
if [ $# -eq 0 ]; then
  COFFER_TEST_BACKEND=postgres cargo test -p coffer-core -p coffer-server -p coffer-cli --test it --locked
fi
