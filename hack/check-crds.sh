#!/usr/bin/env bash
# Fails when crds/ or the chart's copy differs from what the Rust types generate.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cargo run --quiet --locked --bin sluice-crdgen -- "$tmp"
for dir in crds charts/sluice/crds-generated; do
  if ! diff -ru "$dir" "$tmp"; then
    die "$dir is stale: run 'cargo run --bin sluice-crdgen' and commit the result"
  fi
done
