#!/usr/bin/env bash
# Container images of the sluice binaries, built offline with podman (`make images`).
#   hack/images.sh [build]   static binaries -> images -> OCI archives in target/images/,
#                            then the checks below
#   hack/images.sh check     checks only: user 65532, labels, shared sluice-demo layers,
#                            archive names; runs sluice-demo's image and stops it with
#                            SIGTERM; prints the sizes
# Images: ghcr.io/sluice-dev/<binary>:<Cargo version> for sluice-controller, sluice-proxy,
# sluice-demo, sluice-loadtester, and sluice-demo:v1/v2/v3 (VERSION=vN, same layer).
# target/images/index.txt lists "<archive> <image reference>", one per line.
# Env: SLUICE_IMAGE_PROFILE (cargo profile, default image; see Cargo.toml);
# SLUICE_HOST_TOOLS=1 also builds kubectl-sluice and sluice-demo-live (static, run on the
# host by make demo) in the same cargo build, which shares every compiled dependency.
# podman's configuration and storage live in $SLUICE_CACHE/podman: nothing under
# /etc/containers or /var/lib/containers is written.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BINARIES=(sluice-controller sluice-proxy sluice-demo sluice-loadtester)
DEMO_VERSIONS=(v1 v2 v3)
REPO=ghcr.io/sluice-dev
# glibc, statically linked: it resolves /etc/hosts and DNS names in a FROM scratch image
# (checked below, docs/images.md), and the proxy keeps glibc's malloc (musl's is slow
# under many threads).
TARGET=x86_64-unknown-linux-gnu
PROFILE=${SLUICE_IMAGE_PROFILE:-image}
OUT=$ROOT/target/images
CONTAINERFILE=$ROOT/hack/images/Containerfile
PODMAN_HOME=$SLUICE_CACHE/podman
MODE=${1:-build}

case $MODE in
  build | check) ;;
  *) die "usage: hack/images.sh [build|check]" ;;
esac

# --- tools (idempotent) ---
# runc, not crun: this machine mounts cgroup v2 beside v1 (hybrid), which Debian's crun
# 1.8 refuses ("cgroups in hybrid mode not supported"). podman runs as root, with kernel
# overlayfs and host or no networking: no uidmap, fuse-overlayfs or slirp4netns.
apt_ensure podman runc file curl iproute2 ||
  die "apt-get could not install podman, runc, file, curl, iproute2"
for tool in podman runc file ldd curl ss sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (needed by hack/images.sh)"
done

# --- podman, configured under $PODMAN_HOME ---
mkdir -p "$PODMAN_HOME"
# run/ and tmp/ hold state of the running system (mounts, container PIDs): podman expects
# them on tmpfs, gone after a reboot. They are on disk here, so they go at a new boot.
boot_id=$(cat /proc/sys/kernel/random/boot_id)
if [ "$(cat "$PODMAN_HOME/boot_id" 2>/dev/null)" != "$boot_id" ]; then
  rm -rf "$PODMAN_HOME/run" "$PODMAN_HOME/tmp"
  echo "$boot_id" >"$PODMAN_HOME/boot_id"
fi
# overlay where the kernel can mount it on this disk (root, ext4: no fuse-overlayfs
# needed); otherwise vfs, which works everywhere but copies each layer per container
# (a few MB here). Each driver has its own store: they cannot share one.
storage_driver() {
  local probe
  probe=$(mktemp -d "$PODMAN_HOME/probe.XXXXXX")
  mkdir -p "$probe"/{lower,upper,work,merged}
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
    "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    echo overlay
  else
    echo vfs
  fi
  rm -rf "$probe"
}
DRIVER=$(storage_driver)
export CONTAINERS_CONF=$PODMAN_HOME/containers.conf
export CONTAINERS_STORAGE_CONF=$PODMAN_HOME/storage.conf
export CONTAINERS_REGISTRIES_CONF=$PODMAN_HOME/registries.conf
cat >"$CONTAINERS_CONF" <<EOF
# Written by hack/images.sh.
[containers]
# Root here lacks CAP_SYS_RESOURCE and its open-files hard limit is 20000: podman's
# defaults (1048576) fail with "error setting rlimit type 7".
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
# No systemd here.
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_HOME/events.log"
tmp_dir = "$PODMAN_HOME/tmp"
static_dir = "$PODMAN_HOME/storage-$DRIVER/libpod"
volume_path = "$PODMAN_HOME/storage-$DRIVER/volumes"

[network]
network_config_dir = "$PODMAN_HOME/networks"
EOF
cat >"$CONTAINERS_STORAGE_CONF" <<EOF
# Written by hack/images.sh.
[storage]
driver = "$DRIVER"
graphroot = "$PODMAN_HOME/storage-$DRIVER"
runroot = "$PODMAN_HOME/run"
EOF
# Nothing is pulled (FROM scratch, --pull=never): no registries to search.
echo 'unqualified-search-registries = []' >"$CONTAINERS_REGISTRIES_CONF"
podman info >/dev/null 2>"$PODMAN_HOME/info.err" ||
  die "podman does not start: $(tail -1 "$PODMAN_HOME/info.err")"

VERSION=$(cd "$ROOT" && cargo pkgid -p sluice) || die "cargo pkgid failed: cannot read the Cargo version"
VERSION=${VERSION##*[#@]}
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
BIN_DIR=$ROOT/target/$TARGET/$PROFILE

# "<archive file> <image reference> <Containerfile stage> <VERSION env or ->"
images() {
  local bin v
  for bin in "${BINARIES[@]}"; do
    echo "${bin}_$VERSION.tar $REPO/$bin:$VERSION $bin -"
  done
  for v in "${DEMO_VERSIONS[@]}"; do
    echo "sluice-demo_$v.tar $REPO/sluice-demo:$v sluice-demo-version $v"
  done
}

label() { podman image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null; }

build_binaries() {
  local args=() bin
  for bin in "${BINARIES[@]}"; do args+=(--bin "$bin"); done
  if [ -n "${SLUICE_HOST_TOOLS:-}" ]; then
    args+=(-p sluice --bin kubectl-sluice -p xtask --bin sluice-demo-live)
  fi
  log "building static binaries (cargo profile $PROFILE, target $TARGET)"
  # With an explicit --target, RUSTFLAGS reach only the target's crates, not build
  # scripts or proc macros, and the output stays apart from the host builds.
  (cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --profile "$PROFILE" --target "$TARGET" "${args[@]}") ||
    die "cargo build of the static binaries failed"
  for bin in "${BINARIES[@]}"; do
    if ! file -b "$BIN_DIR/$bin" | grep -Eq 'static(-pie)? linked' ||
      ldd "$BIN_DIR/$bin" 2>&1 | grep -q '=>'; then
      die "$BIN_DIR/$bin is not statically linked: $(file -b "$BIN_DIR/$bin")"
    fi
  done
}

# Builds one image unless the one there was built from the same inputs (binary,
# Containerfile, version, revision, demo version), recorded in its label.
build_image() {
  local ref=$1 stage=$2 demo_version=$3 bin=${1##*/}
  bin=${bin%%:*}
  local inputs
  inputs=$( (sha256sum "$BIN_DIR/$bin" "$CONTAINERFILE" | cut -d' ' -f1
    echo "$VERSION $REVISION $stage $demo_version") | sha256sum | cut -c1-32)
  if [ "$(label "$ref" dev.sluice.image.inputs)" = "$inputs" ]; then
    return 0
  fi
  log "building $ref"
  # The context holds only the binary: a hard link, not a copy.
  local context=$OUT/context/$bin
  mkdir -p "$context"
  ln -f "$BIN_DIR/$bin" "$context/$bin" 2>/dev/null || cp -f "$BIN_DIR/$bin" "$context/$bin"
  # --timestamp: file times and the creation time come from the commit, so the same
  # binary gives the same layer, by digest, in every build and tag (sluice-demo:v1..v3
  # share it). podman 4.3's step cache ignores build-argument values in ENV and LABEL
  # (sluice-demo:v2 came out with VERSION=v1), hence --no-cache; --layers=false instead
  # would add an empty layer per stage.
  local args=(--pull=never --network=none --no-cache --quiet --timestamp "$SOURCE_EPOCH"
    -f "$CONTAINERFILE" --target "$stage" -t "$ref"
    --build-arg "BINARY=$bin" --build-arg "VERSION=$VERSION"
    --build-arg "REVISION=$REVISION" --build-arg "INPUTS=$inputs")
  [ "$demo_version" = - ] || args+=(--build-arg "DEMO_VERSION=$demo_version")
  podman build "${args[@]}" "$context" >/dev/null 2>"$PODMAN_HOME/build.err" ||
    die "podman build of $ref failed: $(grep -v '^$' "$PODMAN_HOME/build.err" | tail -1)"
}

# podman save writes the full reference into index.json as org.opencontainers.image.ref.name,
# which `ctr images import` (kind, k3d) keeps as the image name; check() verifies it.
save_archive() {
  local file=$1 ref=$2 id stamp
  id=$(podman image inspect --format '{{.Id}}' "$ref")
  stamp=$OUT/.$file.id
  [ -f "$OUT/$file" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && return 0
  log "saving $ref -> target/images/$file"
  rm -f "$OUT/$file.tmp"
  podman save --quiet --format oci-archive -o "$OUT/$file.tmp" "$ref" 2>"$PODMAN_HOME/save.err" ||
    die "podman save of $ref failed: $(tail -1 "$PODMAN_HOME/save.err")"
  mv "$OUT/$file.tmp" "$OUT/$file"
  echo "$id" >"$stamp"
}

build() {
  mkdir -p "$OUT"
  SOURCE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
  build_binaries
  local file ref stage demo_version
  while read -r file ref stage demo_version; do
    build_image "$ref" "$stage" "$demo_version"
    save_archive "$file" "$ref"
  done < <(images)
  images | cut -d' ' -f1,2 >"$OUT/index.txt"
  # Layers of replaced images: only the newest of each tag is kept.
  podman image prune --force >/dev/null
  log "images: $(wc -l <"$OUT/index.txt") archives listed in target/images/index.txt"
}

# A loopback port nothing listens on, other than the ones given.
free_port() {
  local port
  for port in $(seq 18180 18199); do
    case " $* " in *" $port "*) continue ;; esac
    [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && echo "$port" && return 0
  done
  die "no free port in 18180-18199 for the image checks"
}

check() {
  local file ref stage demo_version user key problems=() rows=()
  local demo_layers
  demo_layers=$(podman image inspect --format '{{.RootFS.Layers}}' "$REPO/sluice-demo:$VERSION" 2>/dev/null) ||
    die "image $REPO/sluice-demo:$VERSION not found: run make images"
  # The chart's default images are tagged with its appVersion.
  local app_version
  app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/sluice/Chart.yaml")
  [ "$app_version" = "$VERSION" ] ||
    problems+=("charts/sluice/Chart.yaml appVersion '$app_version' is not the Cargo version $VERSION")
  while read -r file ref stage demo_version; do
    podman image exists "$ref" || die "image $ref not found: run make images"
    user=$(podman image inspect --format '{{.Config.User}}' "$ref")
    [ "$user" = 65532:65532 ] || problems+=("$ref runs as user '$user', not 65532:65532")
    for key in source version revision title; do
      [ -n "$(label "$ref" "org.opencontainers.image.$key")" ] ||
        problems+=("$ref has no label org.opencontainers.image.$key")
    done
    [ "$(label "$ref" org.opencontainers.image.version)" = "$VERSION" ] ||
      problems+=("$ref: label org.opencontainers.image.version is not $VERSION")
    if [ "$demo_version" != - ]; then
      podman image inspect --format '{{.Config.Env}}' "$ref" |
        grep -Eq "[[ ]VERSION=${demo_version}[] ]" || problems+=("$ref does not set VERSION=$demo_version")
      [ "$(podman image inspect --format '{{.RootFS.Layers}}' "$ref")" = "$demo_layers" ] ||
        problems+=("$ref does not share its layers with $REPO/sluice-demo:$VERSION")
    fi
    if [ ! -f "$OUT/$file" ]; then
      problems+=("archive target/images/$file is missing")
    elif ! tar -xOf "$OUT/$file" index.json |
      grep -q "\"org.opencontainers.image.ref.name\":\"$ref\""; then
      problems+=("target/images/$file: index.json does not name $ref")
    fi
    rows+=("$(printf '%-42s %9s %9s  %s' "$ref" \
      "$(podman image inspect --format '{{.Size}}' "$ref" | numfmt --to=iec)" \
      "$(du -k "$OUT/$file" 2>/dev/null | cut -f1 | numfmt --from-unit=1024 --to=iec)" "$file")")
  done < <(images)
  [ ${#problems[@]} -eq 0 ] || {
    printf 'error: %s\n' "${problems[@]}" >&2
    exit 1
  }
  check_demo_run
  printf '%-42s %9s %9s  %s\n' image unpacked archive file
  printf '%s\n' "${rows[@]}"
}

# Runs sluice-demo's image as it runs in the chart (read-only, no capabilities, user
# 65532): one instance calls a second through a name from --add-host, which proves the
# static glibc resolves names in a FROM scratch image; `podman stop` must not need its
# SIGKILL, which proves SIGTERM is handled by PID 1.
check_demo_run() {
  local upstream front name body started elapsed
  upstream=$(free_port)
  name=sluice-images-check-$$
  podman rm -f "$name-up" "$name" >/dev/null 2>&1 || true
  # shellcheck disable=SC2064 # the names are fixed now
  trap "podman rm -f '$name-up' '$name' >/dev/null 2>&1 || true" EXIT
  podman run -d --name "$name-up" --network host --read-only --cap-drop ALL \
    -e "LISTEN=127.0.0.1:$upstream" -e NAME=upstream "$REPO/sluice-demo:v2" >/dev/null ||
    die "podman run of $REPO/sluice-demo:v2 failed"
  front=$(free_port "$upstream")
  podman run -d --name "$name" --network host --read-only --cap-drop ALL \
    --add-host "sluice-upstream.test:127.0.0.1" -e "LISTEN=127.0.0.1:$front" -e NAME=front \
    -e "UPSTREAM_URIS=http://sluice-upstream.test:$upstream/" "$REPO/sluice-demo:v1" >/dev/null ||
    die "podman run of $REPO/sluice-demo:v1 failed"
  for _ in $(seq 50); do
    body=$(curl -fsS "http://127.0.0.1:$front/" 2>/dev/null) && break
    sleep 0.1
  done
  [ -n "$body" ] || die "sluice-demo image: no answer on 127.0.0.1:$front ($(podman logs "$name" 2>&1 | tail -1))"
  echo "$body" | grep -Eq '"version": ?"v1"' || die "sluice-demo:v1 answered without version v1: $body"
  # The upstream's answer is embedded only when the call went through.
  if ! echo "$body" | grep -Eq '"name": ?"upstream"' || echo "$body" | grep -Eq '"code": ?-1'; then
    die "sluice-demo image: the call to http://sluice-upstream.test:$upstream/ failed: $body"
  fi
  started=$(date +%s%N)
  podman stop -t 10 "$name" >/dev/null
  elapsed=$((($(date +%s%N) - started) / 1000000))
  [ "$elapsed" -lt 2000 ] || die "sluice-demo image took ${elapsed} ms to stop: SIGTERM not handled as PID 1"
  [ "$(podman inspect --format '{{.State.ExitCode}}' "$name")" = 0 ] ||
    die "sluice-demo image exited with code $(podman inspect --format '{{.State.ExitCode}}' "$name") on SIGTERM"
  podman rm -f "$name-up" "$name" >/dev/null
  trap - EXIT
  log "sluice-demo image: answered, called its upstream by name, stopped on SIGTERM in ${elapsed} ms"
}

[ "$MODE" = check ] || build
check
