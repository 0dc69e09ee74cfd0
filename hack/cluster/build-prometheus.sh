#!/usr/bin/env bash
# Builds Prometheus from the Go module proxy into $SLUICE_CACHE/prometheus-<version>/bin/
# (rebuilt only when missing). Debian's `prometheus` package is built without the
# kubernetes service discovery, which the local cluster's scrape config needs.
# Prometheus publishes its Go module as v0.<major><minor>.<patch> (3.16.0 = v0.316.0);
# its go.mod has no replace directives, so `go install` works.
source "$(dirname "$0")/../lib.sh"

PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
out_dir="$SLUICE_CACHE/prometheus-$PROMETHEUS_MODULE_VERSION"
if [ -x "$out_dir/bin/prometheus" ]; then
  log "prometheus $PROMETHEUS_MODULE_VERSION is cached in $out_dir/bin"
  exit 0
fi
command -v go >/dev/null || die "go not found: the Prometheus build needs a Go toolchain"
mkdir -p "$out_dir"
exec 9>"$out_dir/build.lock"
flock 9
[ -x "$out_dir/bin/prometheus" ] && exit 0

[[ $PROMETHEUS_MODULE_VERSION =~ ^v0\.([0-9])([0-9]+)\.([0-9]+)$ ]] ||
  die "unexpected Prometheus module version '$PROMETHEUS_MODULE_VERSION'"
release="${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]})).${BASH_REMATCH[3]}"
t0=$SECONDS
log "building prometheus $release (module $PROMETHEUS_MODULE_VERSION, CGO_ENABLED=0; several minutes cold)"
# The web UI's assets are not embedded (no `builtinassets` tag): the HTTP API works, the UI pages do not.
# Only the kubernetes service discovery is linked (`remove_all_sd`, then `enable_kubernetes_sd`):
# the cloud SDKs of the other mechanisms are most of a default build's compile time.
GOBIN="$out_dir/bin.tmp" CGO_ENABLED=0 GOTOOLCHAIN=local go install -trimpath \
  -tags "remove_all_sd enable_kubernetes_sd" \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release" \
  "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
rm -rf "$out_dir/bin" && mv "$out_dir/bin.tmp" "$out_dir/bin"
log "built prometheus $release in $((SECONDS - t0))s"
