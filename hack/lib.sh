# Shared helpers for the hack/ scripts. Source it; do not run it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
mkdir -p "$SLUICE_CACHE"

log() { printf '\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages that are missing; apt-get update runs once per day at most.
# One install at a time: make test runs the cluster's builds beside its other steps.
apt_ensure() { apt_ensure_with "" "$@"; }
# Like apt_ensure, but a package's own service (e.g. Debian's etcd or prometheus) is
# not started on install: we run those binaries ourselves on our own ports.
apt_ensure_no_start() { apt_ensure_with no-start "$@"; }
apt_ensure_with() {
  local mode=$1 missing=() rc=0; shift
  apt_missing "$@"
  [ ${#missing[@]} -eq 0 ] && return 0
  exec 8>"$SLUICE_CACHE/apt.lock"
  flock 8
  apt_missing "$@"
  if [ ${#missing[@]} -gt 0 ]; then
    local policy=/usr/sbin/policy-rc.d created=
    if [ "$mode" = no-start ] && [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt_install "${missing[@]}" || rc=$?
    [ -n "$created" ] && rm -f "$policy"
  fi
  exec 8>&-
  return $rc
}
# Sets the caller's `missing` to the packages not installed.
apt_missing() {
  missing=()
  local p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
}
apt_install() {
  log "installing Debian packages: $*"
  local stamp="$SLUICE_CACHE/apt-updated"
  if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && touch "$stamp"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

rust_ensure() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
}

# Fails with one clear message when a TCP port on this machine is already listening.
port_free() {
  local port=$1 what=$2 holder
  holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -1)
  [ -z "$holder" ] || die "port $port (for $what) is already in use: $holder"
}
