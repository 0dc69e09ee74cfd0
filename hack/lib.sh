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

# The cluster's parts and helm are Go builds (half an hour of CPU on a cold 2-core machine,
# nothing when cached). make test and make demo start them in the background at a lower
# priority, beside the Rust build, whose link steps and crates built one after another
# leave cores idle; wait_for_prepare waits for them where they are needed.
prepare_in_background() {
  PREPARE_LOG=$1
  mkdir -p "$(dirname "$PREPARE_LOG")"
  setsid nice -n 10 bash -c '"$1/hack/ensure-helm.sh" >/dev/null && "$1/hack/cluster.sh" prepare' \
    _ "$ROOT" >"$PREPARE_LOG" 2>&1 &
  PREPARE_PID=$!
  trap 'kill -- "-$PREPARE_PID" 2>/dev/null || true' EXIT
}
wait_for_prepare() {
  if ! wait "$PREPARE_PID"; then
    cat "$PREPARE_LOG" >&2
    die "building helm or the cluster's parts (hack/cluster.sh prepare) failed; their log is above"
  fi
  log "helm and the cluster's parts are built (log: $PREPARE_LOG)"
}

# Fails with one clear message when a TCP port on this machine is already listening.
port_free() {
  local port=$1 what=$2 holder
  holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -1)
  [ -z "$holder" ] || die "port $port (for $what) is already in use: $holder"
}
