#!/usr/bin/env bash
# Prints the directory of the Gateway API's standard-channel CRDs (HTTPRoute, Gateway,
# GatewayClass, ...), taken from the published Go module sigs.k8s.io/gateway-api, which
# carries them under config/crd/standard. The Go module cache keeps the download.
source "$(dirname "$0")/../lib.sh"

GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.6.3}
command -v go >/dev/null || die "go not found: the Gateway API CRDs come from its Go module"
# `go mod download` outside a module needs a directory of its own to run in.
work="$SLUICE_CACHE/gateway-api-$GATEWAY_API_VERSION"
mkdir -p "$work"
dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
crds="$dir/config/crd/standard"
compgen -G "$crds/gateway.networking.k8s.io_httproutes.yaml" >/dev/null \
  || die "no HTTPRoute CRD in sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION (looked in $crds)"
echo "$crds"
