#!/usr/bin/env bash
# End-to-end tests on the local cluster: builds the images (make images), brings the
# cluster up if needed, loads the images into its node as `kind load` would, and runs
# the ignored e2e tests one at a time.
#
# A test that fails is run once more on its own, and both results are printed: these
# tests drive a whole cluster on 2 cores, and one slow moment must not hide the others'
# results. A test that fails twice fails the run; any retry is named at the end.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# One e2e run at a time per machine: the cluster, its ports and the helm release are shared.
if [ -z "${SLUICE_E2E_LOCKED:-}" ]; then
  # -o: the cluster daemons this run may start must not inherit (and keep) the lock.
  exec env SLUICE_E2E_LOCKED=1 flock -o /tmp/sluice-e2e.lock "$0" "$@"
fi
./hack/images.sh
# A cluster this run starts is stopped at the end (SLUICE_E2E_KEEP=1 keeps it), so a CI
# run leaves nothing running; one that was up before stays up.
stop_cluster=false
if ! ./hack/cluster.sh status >/dev/null 2>&1 && [ -z "${SLUICE_E2E_KEEP:-}" ]; then
  stop_cluster=true
fi
out=$(mktemp)
cleanup() {
  rm -f "$out"
  if $stop_cluster; then ./hack/cluster.sh down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
./hack/cluster.sh up
./hack/cluster.sh load-images
eval "$(./hack/cluster.sh env)"
./hack/ensure-helm.sh >/dev/null
# kubectl-sluice and `sluice-controller --print-router-manifest` run on the host.
cargo build --locked --bins
if cargo test --locked --test e2e -- --ignored --test-threads=1 "$@" 2>&1 | tee "$out"; then
  exit 0
fi
mapfile -t failed < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$out")
[ ${#failed[@]} -gt 0 ] || die "the e2e run failed before any test result (see above)"
log "e2e: ${#failed[@]} test(s) failed; running each once more: ${failed[*]}"
status=0
for t in "${failed[@]}"; do
  cargo test --locked --test e2e -- --ignored --exact "$t" || status=1
done
log "e2e: RETRIED after a failure: ${failed[*]} ($([ $status = 0 ] && echo 'passed on retry' || echo 'failed again'))"
exit $status
