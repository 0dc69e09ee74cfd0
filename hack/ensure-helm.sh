#!/usr/bin/env bash
# Builds helm from its Go module once and prints the binary's path.
source "$(dirname "$0")/lib.sh"
HELM_VERSION=${HELM_VERSION:-v3.22.0}
bin="$SLUICE_CACHE/helm-$HELM_VERSION/bin/helm"
if [ ! -x "$bin" ]; then
  command -v go >/dev/null || die "go not found: helm is built from its Go module"
  mkdir -p "$(dirname "$bin")"
  # One build at a time (make test builds it in the background while other steps run).
  exec 9>"$(dirname "$bin")/../build.lock"
  flock 9
fi
if [ ! -x "$bin" ]; then
  log "building helm $HELM_VERSION from its Go module (first time only, a few minutes)"
  GOBIN="$(dirname "$bin")" CGO_ENABLED=0 GOFLAGS=-mod=mod \
    go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$bin"
