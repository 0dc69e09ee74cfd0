#!/usr/bin/env bash
# End-to-end tests on the local cluster: brings it up if needed, builds the binaries
# the pods run, and runs the ignored e2e tests one at a time.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
./hack/cluster.sh up
eval "$(./hack/cluster.sh env)"
./hack/ensure-helm.sh >/dev/null
cargo build --locked --bins
cargo test --locked --test e2e -- --ignored --test-threads=1 "$@"
