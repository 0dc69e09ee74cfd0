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

prepare_in_background target/background-builds.log

step "install dependencies" rust_ensure
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# sluice-proxy (file mode), sluice-demo and sluice-loadtester build without kube.
without_kube() {
  cargo clippy --locked --no-default-features --all-targets -- -D warnings
  if cargo tree --locked --no-default-features -p sluice -e normal --prefix none |
    grep -qE '^(kube|k8s-openapi) '; then
    die "without the kube feature sluice still depends on kube or k8s-openapi (cargo tree --no-default-features -i kube)"
  fi
}
step "build without kube" without_kube
step "generated CRDs up to date" ./hack/check-crds.sh
step "install Prometheus" ./hack/ensure-prometheus.sh
# In CI a missing Prometheus fails the analysis tests instead of skipping them.
if [ -n "${CI:-}" ]; then export SLUICE_REQUIRE_PROMETHEUS=1; fi
step "cargo test" cargo test --workspace --locked
step "container images" ./hack/images.sh
step "wait for background builds" wait_for_prepare
step "helm chart lint and render" ./hack/check-chart.sh
step "local cluster smoke test" ./hack/cluster/smoke-test.sh
step "end-to-end releases" ./hack/e2e.sh

log "== timing summary"
printf '  %s\n' "${TIMINGS[@]}"
