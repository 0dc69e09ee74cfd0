#!/usr/bin/env bash
# A real local Kubernetes control plane (etcd, kube-apiserver, controller-manager,
# scheduler), our node agent running pods as processes in network namespaces, and
# Prometheus. See docs/local-cluster.md.
#   hack/cluster.sh up|down|status|reset|env|restart-agent|logs [ns/]pod [container]
source "$(dirname "$0")/lib.sh"

K8S_VERSION=${K8S_VERSION:-v1.34.4}
STATE=${SLUICE_CLUSTER_DIR:-$ROOT/.cluster}
PKI=$STATE/pki
PIDS=$STATE/pids
LOGS=$STATE/logs
KUBECONFIG_ADMIN=$STATE/kubeconfig
K8S_BIN=$SLUICE_CACHE/k8s-$K8S_VERSION/bin
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
PROMETHEUS_BIN=$SLUICE_CACHE/prometheus-$PROMETHEUS_MODULE_VERSION/bin/prometheus

APISERVER_PORT=${SLUICE_APISERVER_PORT:-16443}
ETCD_CLIENT_PORT=${SLUICE_ETCD_PORT:-12379}
ETCD_PEER_PORT=${SLUICE_ETCD_PEER_PORT:-12380}
KCM_PORT=${SLUICE_KCM_PORT:-17257}
SCHEDULER_PORT=${SLUICE_SCHEDULER_PORT:-17259}
PROMETHEUS_PORT=${SLUICE_PROMETHEUS_PORT:-19090}
# Never dialed: nothing routes it; only needed so Services get a ClusterIP.
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.0/16
BRIDGE=sluice0
BRIDGE_IP=10.244.0.1
NODE_NAME=${SLUICE_NODE_NAME:-sluice-node}
READY_TIMEOUT=${SLUICE_READY_TIMEOUT:-120}

# Components in start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler node-agent prometheus)
# Optional (SLUICE_FAKE_NODE=1 at `up`): a second agent in fake mode for scale tests.
OPTIONAL_COMPONENTS=(fake-node-agent)
FAKE_NODE_NAME=${SLUICE_FAKE_NODE_NAME:-sluice-fake-0}

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }
running() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Starts a component detached in its own session; output goes to logs/<name>.log.
start_component() {
  local name=$1; shift
  if running "$name"; then
    log "$name already running (pid $(pid_of "$name"))"
    return 0
  fi
  log "starting $name (log: $LOGS/$name.log)"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# Polls `check` until it succeeds; fails with the component's log tail on timeout or exit.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited during startup (full log: $LOGS/$name.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name not ready after ${timeout}s (full log: $LOGS/$name.log)"
    fi
    sleep 0.5
  done
}

stop_component() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # The node agent needs a few seconds to stop pods and remove namespaces.
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

ensure_tools() {
  apt_ensure_no_start etcd-server openssl iproute2 curl kubectl python3
  for tool in etcd openssl ip ss curl kubectl python3 go cargo setsid flock; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found"
  done
  [ "$(id -u)" = 0 ] || die "hack/cluster.sh must run as root (it creates network namespaces)"
}

# The pod CIDR must not overlap any address or route of the machine (except our bridge).
check_pod_cidr() {
  local conflicts
  conflicts=$(python3 - "$POD_CIDR" "$BRIDGE" <<'PY'
import ipaddress, json, subprocess, sys
cidr, bridge = ipaddress.ip_network(sys.argv[1]), sys.argv[2]
for entry in json.loads(subprocess.check_output(["ip", "-j", "-4", "addr"])):
    if entry.get("ifname") == bridge:
        continue
    for a in entry.get("addr_info", []):
        net = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
        if net.overlaps(cidr):
            print(f"address {a['local']}/{a['prefixlen']} on {entry['ifname']}")
for r in json.loads(subprocess.check_output(["ip", "-j", "-4", "route"])):
    if r.get("dev") == bridge or r.get("dst") in (None, "default"):
        continue
    if ipaddress.ip_network(r["dst"], strict=False).overlaps(cidr):
        print(f"route {r['dst']} via {r.get('dev')}")
PY
)
  [ -z "$conflicts" ] || die "pod CIDR $POD_CIDR overlaps this machine's network: $conflicts"
}

check_ports() {
  running etcd || { port_free "$ETCD_CLIENT_PORT" etcd; port_free "$ETCD_PEER_PORT" "etcd peer"; }
  running kube-apiserver || port_free "$APISERVER_PORT" kube-apiserver
  running kube-controller-manager || port_free "$KCM_PORT" kube-controller-manager
  running kube-scheduler || port_free "$SCHEDULER_PORT" kube-scheduler
  running prometheus || port_free "$PROMETHEUS_PORT" prometheus
}

# Client certificate + key signed by the cluster CA.
issue_cert() {
  local name=$1 subject=$2 ext=${3:-}
  [ -f "$PKI/$name.crt" ] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subject" \
    -out "$PKI/$name.csr" 2>/dev/null
  local extfile="$PKI/$name.ext"
  printf '%s\n' "${ext:-extendedKeyUsage=clientAuth}" >"$extfile"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$extfile" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$extfile"
}

write_kubeconfig() {
  local path=$1 cert=$2 server=${3:-https://127.0.0.1:$APISERVER_PORT}
  cat >"$path" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: sluice-local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: sluice-local
  context:
    cluster: sluice-local
    user: $cert
current-context: sluice-local
KUBECONFIG
  chmod 600 "$path"
}

ensure_pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    log "creating the cluster CA and certificates in $PKI"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 -sha256 \
      -subj "/CN=sluice-local-ca" -out "$PKI/ca.crt" 2>/dev/null
  fi
  issue_cert apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
    'extendedKeyUsage=serverAuth' \
    "subjectAltName=IP:127.0.0.1,IP:$BRIDGE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
  issue_cert admin "/O=system:masters/CN=kubernetes-admin"
  issue_cert controller-manager "/CN=system:kube-controller-manager"
  issue_cert scheduler "/CN=system:kube-scheduler"
  # `kubectl logs`: the apiserver calls the node agent's kubelet API with this client cert.
  issue_cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client"
  issue_cert kubelet "/CN=$NODE_NAME" "$(printf '%s\n' \
    'extendedKeyUsage=serverAuth' "subjectAltName=IP:$BRIDGE_IP,DNS:$NODE_NAME")"
  if [ ! -f "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  write_kubeconfig "$KUBECONFIG_ADMIN" admin
  write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
}

apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -q '^ok$'
}

# Ready condition posted and the node lifecycle controller's not-ready taint gone.
node_ready() {
  local node=${1:-$NODE_NAME}
  [ "$(kubectl --kubeconfig "$KUBECONFIG_ADMIN" get node "$node" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] &&
    ! kubectl --kubeconfig "$KUBECONFIG_ADMIN" get node "$node" -o 'jsonpath={.spec.taints}' |
      grep -q not-ready
}

write_prometheus_config() {
  mkdir -p "$STATE/prometheus/data"
  cat >"$STATE/prometheus/prometheus.yml" <<PROM
# Generated by hack/cluster.sh.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $KUBECONFIG_ADMIN
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_phase]
        action: keep
        regex: Running
      # Only our own pod network is ever scraped.
      - source_labels: [__meta_kubernetes_pod_ip]
        action: keep
        regex: '10\.244\.\d+\.\d+'
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        action: replace
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__meta_kubernetes_pod_ip, __meta_kubernetes_pod_annotation_prometheus_io_port]
        action: replace
        regex: '(.+);(\d+)'
        replacement: '\$1:\$2'
        target_label: __address__
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_container_name]
        target_label: container
PROM
}

build_agent() {
  log "building sluice-node-agent (cargo build -p xtask)"
  (cd "$ROOT" && cargo build -q -p xtask --bin sluice-node-agent)
}

cmd_up() {
  local t0=$SECONDS
  ensure_tools
  "$ROOT/hack/cluster/build-k8s.sh"
  "$ROOT/hack/cluster/build-prometheus.sh"
  mkdir -p "$PIDS" "$LOGS" "$STATE/etcd"
  check_ports
  running node-agent || check_pod_cidr
  ensure_pki

  start_component etcd etcd --name sluice --data-dir "$STATE/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "sluice=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for etcd 30 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

  # Binds all addresses so pods reach it on the bridge address; advertises loopback.
  start_component kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 0.0.0.0 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC \
    --endpoint-reconciler-type none \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver "$READY_TIMEOUT" apiserver_ready

  start_component kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --controllers '*' --horizontal-pod-autoscaler-sync-period 5s \
    --kube-api-qps 200 --kube-api-burst 400
  start_component kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
    --kube-api-qps 200 --kube-api-burst 400
  wait_for kube-controller-manager 60 curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 60 curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz"

  # The agent reads its image map at start: a changed map needs a restarted agent.
  if running node-agent && [ "$ROOT/hack/cluster/images.yaml" -nt "$PIDS/node-agent.pid" ]; then
    log "hack/cluster/images.yaml changed: restarting the node agent"
    stop_component fake-node-agent
    stop_component node-agent
  fi
  if ! running node-agent || { [ -n "${SLUICE_FAKE_NODE:-}" ] && ! running fake-node-agent; }; then
    build_agent
  fi
  if ! running node-agent; then
    start_component node-agent "$ROOT/target/debug/sluice-node-agent" \
      --kubeconfig "$KUBECONFIG_ADMIN" --node-name "$NODE_NAME" \
      --images "$ROOT/hack/cluster/images.yaml" --repo-root "$ROOT" --state-dir "$STATE" \
      --pod-cidr "$POD_CIDR" --bridge "$BRIDGE" --apiserver-port "$APISERVER_PORT" \
      --kubelet-version "$K8S_VERSION" \
      --ca-file "$PKI/ca.crt" \
      --kubelet-cert "$PKI/kubelet.crt" --kubelet-key "$PKI/kubelet.key" --kubelet-client-ca "$PKI/ca.crt"
  fi
  wait_for node-agent 90 node_ready
  if [ -n "${SLUICE_FAKE_NODE:-}" ]; then
    start_component fake-node-agent "$ROOT/target/debug/sluice-node-agent" --mode fake \
      --kubeconfig "$KUBECONFIG_ADMIN" --node-name "$FAKE_NODE_NAME" --max-pods 5000 \
      --images "$ROOT/hack/cluster/images.yaml" --repo-root "$ROOT" --state-dir "$STATE" \
      --pod-cidr "$POD_CIDR" --kubelet-version "$K8S_VERSION"
    wait_for fake-node-agent 60 node_ready "$FAKE_NODE_NAME"
  fi

  write_prometheus_config
  # On all addresses, like the apiserver, so that pods (the controller) reach it at
  # the bridge address 10.244.0.1.
  start_component prometheus "$PROMETHEUS_BIN" --config.file "$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path "$STATE/prometheus/data" --storage.tsdb.retention.time 1d \
    --web.listen-address "0.0.0.0:$PROMETHEUS_PORT"
  wait_for prometheus 60 curl -fsS --max-time 2 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"

  log "cluster up in $((SECONDS - t0))s: export KUBECONFIG=$KUBECONFIG_ADMIN"
}

cmd_down() {
  local i
  local all=("${COMPONENTS[@]:0:4}" node-agent "${OPTIONAL_COMPONENTS[@]}" prometheus)
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do stop_component "${all[$i]}"; done
  # The agent removes its namespaces and bridge on exit; this catches a crashed one,
  # unless some agent (e.g. another checkout's cluster) still uses them.
  if pgrep -f '/sluice-node-agent( |$)' >/dev/null; then
    log "another sluice-node-agent is running: leaving network namespaces and $BRIDGE alone"
    log "cluster stopped (state kept in $STATE; 'reset' wipes it)"
    return 0
  fi
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^sluice-/ {print $1}'); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE" 2>/dev/null || true
  log "cluster stopped (state kept in $STATE; 'reset' wipes it)"
}

cmd_status() {
  local name pid rc=0
  for name in "${COMPONENTS[@]}"; do
    pid=$(pid_of "$name")
    if running "$name"; then
      printf '%-26s running  pid %s\n' "$name" "$pid"
    else
      printf '%-26s stopped\n' "$name"
      rc=1
    fi
  done
  for name in "${OPTIONAL_COMPONENTS[@]}"; do
    [ -f "$PIDS/$name.pid" ] || continue
    if running "$name"; then printf '%-26s running  pid %s\n' "$name" "$(pid_of "$name")"; else printf '%-26s stopped\n' "$name"; fi
  done
  printf 'kubeconfig  %s\napiserver   https://127.0.0.1:%s (pods: https://%s:%s)\nprometheus  http://127.0.0.1:%s\n' \
    "$KUBECONFIG_ADMIN" "$APISERVER_PORT" "$BRIDGE_IP" "$APISERVER_PORT" "$PROMETHEUS_PORT"
  if running kube-apiserver; then
    kubectl --kubeconfig "$KUBECONFIG_ADMIN" get nodes -o wide 2>/dev/null || true
  fi
  return $rc
}

cmd_env() {
  printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_ADMIN"
  printf 'export SLUICE_PROMETHEUS_URL=http://127.0.0.1:%s\n' "$PROMETHEUS_PORT"
  # The same Prometheus as pods (e.g. the controller) reach it.
  printf 'export SLUICE_PROMETHEUS_POD_URL=http://10.244.0.1:%s\n' "$PROMETHEUS_PORT"
}

# Reads container log files directly (`kubectl logs` also works, through the agent).
cmd_logs() {
  local target=${1:-} container=${2:-} ns pod files
  [ -n "$target" ] || die "usage: hack/cluster.sh logs [namespace/]pod [container] (add -f via LOGS_FOLLOW=1)"
  if [[ $target == */* ]]; then ns=${target%%/*}; pod=${target#*/}; else ns=default; pod=$target; fi
  shopt -s nullglob
  local pattern="${ns}_${pod}_${container:-*}.log"
  # shellcheck disable=SC2206 # the pattern is meant to glob
  files=("$LOGS"/pods/$pattern)
  [ ${#files[@]} -gt 0 ] || die "no logs for $ns/$pod${container:+/$container} in $LOGS/pods/"
  if [ -n "${LOGS_FOLLOW:-}" ]; then tail -n 50 -f "${files[@]}"; else tail -n "${LOGS_TAIL:-200}" "${files[@]}"; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  reset) cmd_down; log "removing $STATE"; rm -rf "$STATE" ;;
  env) cmd_env ;;
  logs) shift; cmd_logs "$@" ;;
  # Picks up a rebuilt agent; its pods' processes restart (their IPs are kept).
  restart-agent) stop_component fake-node-agent; stop_component node-agent; cmd_up ;;
  *) die "usage: hack/cluster.sh up|down|status|reset|env|logs|restart-agent" ;;
esac
