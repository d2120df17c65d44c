#!/usr/bin/env bash
# The vendored sqlx-core (vendor/README.md, docs/adr/0006-vendored-sqlx-core.md) must be
# exactly crates.io's sqlx-core plus vendor/sqlx-core.patch, and the build must really use it:
#  1. download the published crate (cached in target/vendor-check/), check its SHA-256,
#     apply the patch and compare the result with vendor/sqlx-core;
#  2. check with `cargo metadata --locked` that sqlx-core resolves to vendor/sqlx-core (not
#     the registry) and that sqlx is the version the vendored copy was cut from.
# Re-cutting the patch after an upgrade: see the ADR.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=sqlx-core
VERSION=0.9.0
# SHA-256 of https://static.crates.io/crates/sqlx-core/sqlx-core-0.9.0.crate, the same as the
# `checksum` crates.io's index (and Cargo.lock before the vendoring) gives for it.
SHA256=05b44e85bf579a8eeb4ceaa77a3a523baf2bf0e9bac7e40f405d537b5d2d5ccb
URL="https://static.crates.io/crates/$NAME/$NAME-$VERSION.crate"
VENDORED=vendor/$NAME
PATCH=vendor/$NAME.patch
# Files of the published crate the vendored copy leaves out: cargo's packaging metadata,
# which a path dependency does not use.
EXCLUDED=(.cargo_vcs_info.json Cargo.lock Cargo.toml.orig)

fail() { echo "check-vendor: $*" >&2; exit 1; }

root=$PWD
cache=target/vendor-check
crate=$cache/$NAME-$VERSION.crate
mkdir -p "$cache"

sha_ok() { [ -f "$crate" ] && [ "$(sha256sum "$crate" | awk '{print $1}')" = "$SHA256" ]; }
if ! sha_ok; then
  rm -f "$crate"
  echo "downloading $URL"
  curl -fsSL --retry 3 -o "$crate.part" "$URL" || fail "could not download $URL"
  mv "$crate.part" "$crate"
  sha_ok || fail "$crate: SHA-256 $(sha256sum "$crate" | awk '{print $1}'), expected $SHA256"
fi

work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
tree=$work/$NAME-$VERSION
[ -d "$tree" ] || fail "$crate does not unpack to $NAME-$VERSION/"
for f in "${EXCLUDED[@]}"; do rm -f "$tree/$f"; done

if ! (cd "$tree" && patch -p1 --batch --forward --fuzz=0 --silent --no-backup-if-mismatch \
        --reject-file=- <"$root/$PATCH"); then
  fail "$PATCH does not apply cleanly to the published $NAME $VERSION"
fi
if ! diff -r "$tree" "$VENDORED" >"$work/diff"; then
  head -n 100 "$work/diff" >&2
  fail "$VENDORED differs from crates.io's $NAME $VERSION + $PATCH (diff above: < expected, > vendored).
Every change to the vendored copy goes into $PATCH (docs/adr/0006-vendored-sqlx-core.md)."
fi
echo "$VENDORED = crates.io $NAME $VERSION (sha256 $SHA256) + $PATCH"

cargo metadata --locked --format-version 1 >"$work/metadata.json" \
  || fail "cargo metadata --locked failed (Cargo.lock out of date?)"
python3 - "$work/metadata.json" "$NAME" "$VERSION" "$root/$VENDORED/Cargo.toml" <<'EOF'
import json, os, sys

path, name, version, manifest = sys.argv[1:]
meta = json.load(open(path))
errors = []

core = [p for p in meta["packages"] if p["name"] == name]
if len(core) != 1:
    errors.append(f"expected one {name} package in the build, found {len(core)}: "
                  + ", ".join(f"{p['version']} from {p['source'] or p['manifest_path']}" for p in core))
for p in core:
    if p["source"] is not None:
        errors.append(f"{name} {p['version']} comes from {p['source']}, not from the vendored copy "
                      "(is the [patch.crates-io] entry in Cargo.toml still used?)")
    if os.path.realpath(p["manifest_path"]) != os.path.realpath(manifest):
        errors.append(f"{name} is built from {p['manifest_path']}, expected {manifest}")
    if p["version"] != version:
        errors.append(f"vendored {name} is {p['version']}, expected {version}")

sqlx = [p for p in meta["packages"] if p["name"] == "sqlx"]
if len(sqlx) != 1 or sqlx[0]["version"] != version:
    errors.append(f"sqlx in the build: {[p['version'] for p in sqlx]}, expected exactly {version} "
                  "(the version the vendored sqlx-core was cut from)")

members = set(meta["workspace_members"])
for p in meta["packages"]:
    if p["id"] not in members:
        continue
    for d in p["dependencies"]:
        if d["name"] == "sqlx" and d["req"] != f"={version}":
            errors.append(f"{p['name']} depends on sqlx {d['req']}, expected ={version}")

if errors:
    print("check-vendor: the build does not use the vendored " + name + ":", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)
print(f"the build uses vendor/{name} ({version}) with sqlx ={version}")
EOF
