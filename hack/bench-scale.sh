#!/usr/bin/env bash
# Measures the controller with many Canaries, side by side with Flagger, on the local
# cluster's real apiserver; only the pods are simulated (KWOK). Not a test: prints
# numbers. Results: docs/scale.md.
#   hack/bench-scale.sh                       # N="100 300", both controllers, 1 round
# Env: N (Canary counts), CONTROLLERS ("sluice flagger"), ROUNDS (1), RELEASED (percent
#   of the Canaries whose image is bumped, 20), STEADY (seconds of the steady window, 60),
#   OUT (results directory), SLUICE_BASE (a second sluice-controller binary, e.g. a build
#   of an earlier commit: measured as controller sluice-base when CONTROLLERS names it),
#   HEAPTRACK=1 (runs sluice under heaptrack: a build with line tables and without LTO,
#   killed with SIGKILL after its releases, so the profile's "leaked" memory is the heap
#   live at that moment; $OUT/<run>.heap.txt is heaptrack_print's summary of it).
# Each controller runs on the host (release build, admin kubeconfig, no leader
# election), one at a time, against the same Deployments and Canaries (only the Canary's
# apiVersion differs): provider istio, interval 10s, stepWeight 10, maxWeight 50, no
# metric checks. Per controller and N: time until every Canary is Initialized, RSS and
# CPU over a steady window, the apiserver's requests in that window by verb and resource
# (its apiserver_request_total, minus the same window with no controller running), and
# for RELEASED % of the Canaries: the time from the image bump to the first weight
# change and to Succeeded, peak RSS while they progress.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
N=${N:-"100 300"}; CONTROLLERS=${CONTROLLERS:-"sluice flagger"}; ROUNDS=${ROUNDS:-1}
RELEASED=${RELEASED:-20}; STEADY=${STEADY:-60}
OUT=${OUT:-/tmp/sluice-scale-$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"
KWOK_VERSION=v0.8.0 FLAGGER_VERSION=v1.44.0
PER_NAMESPACE=10
SLUICE_PORT=18200 FLAGGER_PORT=18201

# --- tools (idempotent) ---
command -v go >/dev/null || die "go not found: run hack/cluster.sh prepare first"
go_tool() { # module version binary: builds a Go command once into the cache
  local bin=$SLUICE_CACHE/$3-$2/bin/$3
  if [ ! -x "$bin" ]; then
    log "building $3 $2 from its Go module (first time only)"
    (cd /tmp && GOBIN=$(dirname "$bin") CGO_ENABLED=0 GOFLAGS=-mod=mod go install "$1@$2") >&2
  fi
  echo "$bin"
}
KWOK=$(go_tool sigs.k8s.io/kwok/cmd/kwok $KWOK_VERSION kwok)
case " $CONTROLLERS " in *" flagger "*)
  FLAGGER=$(go_tool github.com/fluxcd/flagger/cmd/flagger $FLAGGER_VERSION flagger)
  FLAGGER_CRD=$(go env GOMODCACHE)/github.com/fluxcd/flagger@$FLAGGER_VERSION/artifacts/flagger/crd.yaml
  [ -f "$FLAGGER_CRD" ] || (cd /tmp && go mod download github.com/fluxcd/flagger@$FLAGGER_VERSION)
esac
HEAPTRACK=${HEAPTRACK:-}
if [ -n "$HEAPTRACK" ]; then
  command -v heaptrack >/dev/null || apt_install heaptrack
  log "building sluice-controller (release, line tables, no LTO: for heaptrack)"
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build -q --release --locked --bin sluice-controller --target-dir "$ROOT/target/heaptrack"
  SLUICE=$ROOT/target/heaptrack/release/sluice-controller
else
  log "building sluice-controller (release)"
  cargo build -q --release --locked --bin sluice-controller
  SLUICE=$ROOT/target/release/sluice-controller
fi

./hack/cluster.sh up >&2
eval "$(./hack/cluster.sh env)"
kubectl apply --server-side -f crds/ -f charts/sluice/istio-crds/ >/dev/null
[ -z "${FLAGGER_CRD:-}" ] || kubectl apply --server-side -f "$FLAGGER_CRD" >/dev/null
kubectl wait --for=condition=established crd --all --timeout=60s >/dev/null

# What an earlier run left: its namespaces, and the simulated node (its pods' Ready
# condition was dropped when that run's KWOK stopped renewing the node's Lease).
# The node goes first: its pods, orphaned, are then removed by the pod garbage collector
# (no KWOK runs to finish their graceful deletion).
kubectl delete node kwok-node-0 --ignore-not-found >/dev/null
leftover=$(kubectl get namespaces -o name | grep '^namespace/scale-' || true)
# shellcheck disable=SC2086
[ -z "$leftover" ] || kubectl delete $leftover --wait=true --timeout=300s >/dev/null

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
# The simulated node: KWOK keeps it Ready (its status every 20-45 s and a Lease: when
# both lapse the node controller marks its pods not ready) and moves its pods
# to Running and Ready at once (no containers): the stages from KWOK's own module.
STAGES=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
stages=()
for f in "$STAGES"/node/fast/node-initialize.yaml "$STAGES"/node/heartbeat/*.yaml "$STAGES"/pod/fast/pod-*.yaml; do
  [ -f "$f" ] || die "no KWOK stage $f"
  stages+=(-c "$f")
done
# client-go's streaming lists need a storage feature this apiserver lacks; plain lists.
KUBE_FEATURE_WatchListClient=false "$KWOK" --kubeconfig="$KUBECONFIG" "${stages[@]}" --manage-all-nodes=false \
  --node-lease-duration-seconds=40 \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --cidr=10.250.0.0/16 --node-ip=10.250.0.1 >"$OUT/kwok.log" 2>&1 &
PIDS+=($!)
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, type: kwok}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: "1000", memory: 1Ti, pods: "10000"}
  capacity: {cpu: "1000", memory: 1Ti, pods: "10000"}
YAML
kubectl wait --for=condition=Ready node/kwok-node-0 --timeout=60s >/dev/null

namespaces() { seq -f "scale-%03g" 0 $((($1 - 1) / PER_NAMESPACE)); }
manifests() { # n api_group
  local n=$1 group=$2 i ns
  for ((i = 0; i < n; i++)); do
    ns=$(printf "scale-%03d" $((i / PER_NAMESPACE)))
    cat <<YAML
---
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: $ns}
spec:
  replicas: 1
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec:
      nodeSelector: {type: kwok}
      tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
      containers:
      - {name: app, image: ghcr.io/sluice-dev/sluice-demo:v1, env: [{name: V, value: "1"}], ports: [{containerPort: 8080}]}
---
apiVersion: $group/v1beta1
kind: Canary
metadata: {name: app-$i, namespace: $ns}
spec:
  provider: istio
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: app-$i}
  progressDeadlineSeconds: 600
  service: {port: 80, targetPort: 8080}
  analysis: {interval: 10s, threshold: 2, maxWeight: 50, stepWeight: 10}
YAML
  done
}

# apiserver_request_total summed by verb and resource[/subresource] ("-" for none);
# a watch counts once, when it starts.
api_requests() {
  kubectl get --raw /metrics | awk '
    function label(k) {
      if (match($0, "[{,]" k "=\"[^\"]*\"")) return substr($0, RSTART + length(k) + 3, RLENGTH - length(k) - 4)
      return ""
    }
    /^apiserver_request_total\{/ {
      res = label("resource"); sr = label("subresource")
      if (res == "") res = "-"
      if (sr != "") res = res "/" sr
      n[label("verb") " " res] += $NF
    }
    END { for (k in n) print k, n[k] }' | sort
}
# Lines "verb resource count": what grew from the first file to the second.
delta() { awk 'NR == FNR { a[$1 " " $2] = $3; next } { d = $3 - a[$1 " " $2]; if (d > 0) print $1, $2, d }' "$1" "$2" | sort; }
# What the first delta has beyond the second.
minus() { delta "$2" "$1" | sort -k3 -nr; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
phases() { kubectl get "canaries.$1" -A -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | sort | uniq -c | tr '\n' ' '; }
count_phase() { kubectl get "canaries.$1" -A -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -cx "$2" || true; }

start_controller() { # name tag -> pid
  case $1 in
    sluice) if [ -n "$HEAPTRACK" ]; then
        SLUICE_LOG=warn heaptrack -o "$OUT/$2.heaptrack" "$SLUICE" --listen 127.0.0.1:$SLUICE_PORT >"$OUT/$1.log" 2>&1 &
        # The controller is heaptrack's child: its pid is the one measured and stopped.
        for _ in $(seq 100); do pgrep -n -f "^$SLUICE --listen" && return; sleep 0.1; done
        die "sluice-controller did not start under heaptrack: $(tail -5 "$OUT/$1.log")"
      fi
      SLUICE_LOG=warn "$SLUICE" --listen 127.0.0.1:$SLUICE_PORT >"$OUT/$1.log" 2>&1 & ;;
    sluice-base) SLUICE_LOG=warn "${SLUICE_BASE:?}" --listen 127.0.0.1:$SLUICE_PORT >"$OUT/$1.log" 2>&1 & ;;
    flagger) KUBE_FEATURE_WatchListClient=false "$FLAGGER" -kubeconfig "$KUBECONFIG" -mesh-provider istio -metrics-server "$SLUICE_PROMETHEUS_URL" \
        -log-level error -port $FLAGGER_PORT >"$OUT/$1.log" 2>&1 & ;;
  esac
  echo $!
}
group_of() { case $1 in sluice*) echo sluice.dev ;; flagger) echo flagger.app ;; esac; }

run_one() { # controller n round
  local c=$1 n=$2 round=$3 group pid t0 r0 c0 a0 a1 rss cpu ticks released first done_s peak
  group=$(group_of "$c"); ticks=$(getconf CLK_TCK)
  local tag="$c-n$n-r$round"
  log "[$tag] creating $n Deployments and Canaries"
  manifests "$n" "$group" | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Available deploy --all -A --timeout=300s >/dev/null
  # The apiserver's own traffic (kwok, controller-manager, scheduler) in a window
  # without any controller: subtracted from the controller's window below.
  api_requests >"$OUT/$tag.base0"; sleep "$STEADY"; api_requests >"$OUT/$tag.base1"
  pid=$(start_controller "$c" "$tag"); PIDS+=("$pid"); t0=$SECONDS
  until [ "$(count_phase "$group" Initialized)" -ge "$n" ]; do
    kill -0 "$pid" 2>/dev/null || die "[$tag] $c exited: $(tail -5 "$OUT/$c.log")"
    [ $((SECONDS - t0)) -lt 900 ] || die "[$tag] not all Initialized after 900 s: $(phases "$group")"
    sleep 1
  done
  local init=$((SECONDS - t0))
  # Long enough for the scaled-down targets' pods to be gone.
  sleep 45
  api_requests >"$OUT/$tag.api0"; c0=$(cpu_ticks "$pid")
  sleep "$STEADY"
  api_requests >"$OUT/$tag.api1"; cpu=$(($(cpu_ticks "$pid") - c0)); rss=$(rss_kb "$pid")
  delta "$OUT/$tag.base0" "$OUT/$tag.base1" >"$OUT/$tag.base"
  delta "$OUT/$tag.api0" "$OUT/$tag.api1" >"$OUT/$tag.window"
  # The controller's requests: its window minus the window without it.
  minus "$OUT/$tag.window" "$OUT/$tag.base" >"$OUT/$tag.requests"
  local steady_requests
  steady_requests=$(awk '{ s += $3 } END { print s + 0 }' "$OUT/$tag.requests")

  released=$(((n * RELEASED + 99) / 100))
  log "[$tag] releasing $released of $n"
  # Every VirtualService change with the time it was seen: step periods below.
  kubectl get virtualservices -A --watch-only -o jsonpath='{.metadata.namespace}/{.metadata.name} {.spec.http[0].route[*].weight}{"\n"}' |
    while read -r line; do echo "$(date +%s.%N) $line"; done >"$OUT/$tag.vs" &
  local watch_pid=$!
  t0=$SECONDS; peak=0; first=""; bump=$(date +%s.%N)
  for ((i = 0; i < released; i++)); do
    echo "deploy/app-$i -n $(printf "scale-%03d" $((i / PER_NAMESPACE)))"
  done | xargs -P 8 -L 1 sh -c 'kubectl set env "$0" "$@" V=2 >/dev/null'
  while :; do
    local s
    s=$(count_phase "$group" Succeeded)
    r=$(rss_kb "$pid"); [ "$r" -gt "$peak" ] && peak=$r
    # A weight strictly between 0 and 100 on any VirtualService: the first step taken.
    if [ -z "$first" ] && kubectl get virtualservices -A -o jsonpath='{range .items[*]}{.spec.http[0].route[*].weight}{"\n"}{end}' |
      grep -qE '(^| )[1-9][0-9]?( |$)'; then
      first=$((SECONDS - t0))
    fi
    [ "$s" -ge "$released" ] && break
    [ $((SECONDS - t0)) -lt 400 ] || { log "[$tag] not all Succeeded after 400 s: $(phases "$group")"; break; }
    sleep 1
  done
  done_s=$((SECONDS - t0))
  if [ -n "$HEAPTRACK" ] && [ "$c" = sluice ]; then
    kill -KILL "$pid"
    # heaptrack writes its file once the controller's pipe closes.
    while pgrep -f "heaptrack_interpret" >/dev/null; do sleep 1; done
    heaptrack_print -f "$OUT/$tag.heaptrack".*zst --print-leaks --peak-limit 20 --print-allocators 0 --print-temporary 0 \
      >"$OUT/$tag.heap.txt" 2>&1 || true
  else
    kill "$pid"
  fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  pkill -P "$watch_pid" 2>/dev/null || true; kill "$watch_pid" 2>/dev/null || true
  local steps
  steps=$(python3 "$ROOT/hack/bench/steps.py" "$bump" <"$OUT/$tag.vs")
  printf '%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$n" "$round" "$init" "$((rss / 1024))" \
    "$(echo "$cpu / $ticks" | bc -l)" "$steady_requests" "$released" "${first:-none}" "$done_s" "$((peak / 1024))" "$steps" |
    tee -a "$OUT/results.tsv"
  log "[$tag] deleting the namespaces"
  # shellcheck disable=SC2046
  kubectl delete namespace $(namespaces "$n") --wait=true --timeout=300s >/dev/null
}

printf 'controller\tN\tround\tinit_s\tsteady_rss_mb\tsteady_cpu_s\tsteady_requests\treleased\tfirst_weight_s\treleased_s\tpeak_rss_mb\tstep_period_p50/p99/max_s\n' >"$OUT/results.tsv"
log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); results in $OUT"
for n in $N; do
  for ((round = 1; round <= ROUNDS; round++)); do
    for c in $CONTROLLERS; do run_one "$c" "$n" "$round"; done
  done
done
column -t -s $'\t' "$OUT/results.tsv"
for f in "$OUT"/*.requests; do echo "== $(basename "$f" .requests): requests in ${STEADY}s"; head -8 "$f"; done
