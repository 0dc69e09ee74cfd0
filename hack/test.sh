#!/usr/bin/env bash
# Runs every check and test: formatting, lints, generated files, unit and integration tests.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

declare -a TIMINGS=()
step() {
  local name=$1; shift
  local t0=$SECONDS
  log "== $name"
  "$@"
  TIMINGS+=("$(printf '%-28s %5ds' "$name" $((SECONDS - t0)))")
}

# The cluster's parts and helm are Go builds (half an hour of CPU on a cold 2-core
# machine, nothing when cached). They run in the background, at a lower priority, beside
# the Rust steps and fill the cores those leave idle (link steps, the crates built one
# after another); the steps that need them wait for them.
background_builds() {
  ./hack/ensure-helm.sh >/dev/null
  ./hack/cluster.sh prepare
}
mkdir -p target
BUILDS_LOG=target/background-builds.log
setsid nice -n 10 bash -c "$(declare -f background_builds); background_builds" >"$BUILDS_LOG" 2>&1 &
BUILDS_PID=$!
trap 'kill -- "-$BUILDS_PID" 2>/dev/null || true' EXIT
wait_for_builds() {
  if ! wait "$BUILDS_PID"; then
    cat "$BUILDS_LOG" >&2
    die "the background builds (helm, hack/cluster.sh prepare) failed; their log is above"
  fi
  log "background builds done (log: $BUILDS_LOG)"
}

step "install dependencies" rust_ensure
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "generated CRDs up to date" ./hack/check-crds.sh
step "install Prometheus" ./hack/ensure-prometheus.sh
# In CI a missing Prometheus fails the analysis tests instead of skipping them.
if [ -n "${CI:-}" ]; then export SLUICE_REQUIRE_PROMETHEUS=1; fi
step "cargo test" cargo test --workspace --locked
step "container images" ./hack/images.sh
step "wait for background builds" wait_for_builds
step "helm chart lint and render" ./hack/check-chart.sh
step "local cluster smoke test" ./hack/cluster/smoke-test.sh
step "end-to-end releases" ./hack/e2e.sh

log "== timing summary"
printf '  %s\n' "${TIMINGS[@]}"
