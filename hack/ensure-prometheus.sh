#!/usr/bin/env bash
# Installs the Prometheus server used by tests/analysis_prometheus.rs (Debian package).
# Idempotent: does nothing when the package is already installed.
source "$(dirname "$0")/lib.sh"
# Debian would start its own Prometheus service on :9090; the tests start their own.
apt_ensure_no_start prometheus
command -v prometheus >/dev/null || die "prometheus binary not on PATH after install"
log "prometheus: $(prometheus --version 2>&1 | head -n1)"
