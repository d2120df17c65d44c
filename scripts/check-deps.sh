#!/usr/bin/env bash
# The crate graph is the security architecture (docs/ARCHITECTURE.md): fail if a crate
# depends on something its zone must not see.
set -euo pipefail
cd "$(dirname "$0")/.."

direct() { cargo tree --locked -p "$1" -e normal --depth 1 --prefix none | tail -n +2 | awk '{print $1}' | sort -u; }
all() { cargo tree --locked -p "$1" -e normal --prefix none | awk '{print $1}' | sort -u; }

fail=0
forbid() { # crate, list-kind, forbidden...
  local crate=$1 kind=$2; shift 2
  local deps; deps=$($kind "$crate")
  for f in "$@"; do
    if grep -qx "$f" <<<"$deps"; then echo "dependency rule broken: $crate must not depend on $f"; fail=1; fi
  done
}

# crypto does no I/O.
forbid coffer-crypto all tokio sqlx axum reqwest hyper
# the store never sees the HTTP edge or the seal.
forbid coffer-store all axum reqwest coffer-seal coffer-core
# the seal abstraction and the domain have no HTTP and load no PKCS#11 module: the KMS and
# HSM clients live in coffer-extkeys, which only the binary wires in.
forbid coffer-seal all reqwest hyper cryptoki coffer-extkeys
forbid coffer-core all axum reqwest hyper cryptoki coffer-extkeys
# the core receives repositories and names no backend: the binary's wiring (coffer-cli, and
# coffer-testkit for tests) chooses the database; nor does the HTTP edge.
forbid coffer-core direct sqlx
for crate in coffer-core coffer-server; do
  if grep -rnE 'coffer_store::(sqlite|postgres)|SqliteStore|PgStore|Location::(Sqlite|Postgres)' "crates/$crate/src"; then
    echo "dependency rule broken: $crate names a storage backend (only the binary's wiring may)"; fail=1
  fi
done
# the HTTP edge reaches keys and storage only through coffer-core.
forbid coffer-server direct coffer-crypto coffer-seal coffer-store sqlx
forbid coffer-server all coffer-extkeys cryptoki
# the client is independent of the server side.
forbid coffer-client all coffer-core coffer-store coffer-crypto coffer-seal axum
[ "$fail" = 0 ] && echo "dependency rules hold"
exit "$fail"
