#!/usr/bin/env bash
# Fails when crds/ differs from what the Rust types generate.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p crds
cargo run --quiet --locked --bin sluice-crdgen -- "$tmp"
if ! diff -ru crds "$tmp"; then
  die "crds/ is stale: run 'cargo run --bin sluice-crdgen -- crds' and commit the result"
fi
