#!/usr/bin/env bash
# A real local Kubernetes cluster on this machine: etcd, kube-apiserver,
# controller-manager and scheduler, one node (containerd + kubelet + kube-proxy, CNI
# bridge), CoreDNS, and Prometheus. See docs/local-cluster.md.
#   hack/cluster.sh prepare|up|down|status|reset|env|load-images [ARCHIVE...]
source "$(dirname "$0")/lib.sh"

K8S_VERSION=${K8S_VERSION:-v1.34.4}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.34.0}
STATE=${SLUICE_CLUSTER_DIR:-$ROOT/.cluster}
PKI=$STATE/pki
PIDS=$STATE/pids
LOGS=$STATE/logs
KUBECONFIG_ADMIN=$STATE/kubeconfig
K8S_BIN=$SLUICE_CACHE/k8s-$K8S_VERSION/bin
CONTAINERD_BIN=$SLUICE_CACHE/containerd-$CONTAINERD_VERSION/bin
COREDNS_BIN=$SLUICE_CACHE/coredns-$COREDNS_VERSION/bin/coredns
CRICTL=$SLUICE_CACHE/cri-tools-$CRI_TOOLS_VERSION/bin/crictl
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
PROMETHEUS_BIN=$SLUICE_CACHE/prometheus-$PROMETHEUS_MODULE_VERSION/bin/prometheus

APISERVER_PORT=${SLUICE_APISERVER_PORT:-16443}
ETCD_CLIENT_PORT=${SLUICE_ETCD_PORT:-12379}
ETCD_PEER_PORT=${SLUICE_ETCD_PEER_PORT:-12380}
KCM_PORT=${SLUICE_KCM_PORT:-17257}
SCHEDULER_PORT=${SLUICE_SCHEDULER_PORT:-17259}
PROMETHEUS_PORT=${SLUICE_PROMETHEUS_PORT:-19090}
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_METRICS_PORT=10249
KUBE_PROXY_HEALTHZ_PORT=10256
# Virtual addresses, translated by kube-proxy for traffic from pods; the host routes
# the whole range to a blackhole, so an untranslated one is dropped, never routed out.
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
POD_CIDR=10.244.0.0/16
BRIDGE=sluice0
# The node's address (kubelet --node-ip) and the pods' gateway; the apiserver
# advertises it, so the `kubernetes` Service leads here.
BRIDGE_IP=10.244.0.1
NODE_NAME=${SLUICE_NODE_NAME:-sluice-node}
READY_TIMEOUT=${SLUICE_READY_TIMEOUT:-120}
CONTAINERD_SOCK=$STATE/containerd/containerd.sock
# Images the node itself needs; built locally, never pulled.
PAUSE_IMAGE=localhost/sluice/pause:3.10
COREDNS_IMAGE=localhost/sluice/coredns:$COREDNS_VERSION
IMAGES_DIR=$ROOT/target/images
# Host settings kubelet or the CNI bridge plugin change; `up` records them, `down` puts
# them back.
SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
FORWARD_CHAIN=SLUICE-FORWARD

# Components in start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy prometheus)

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }
running() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
kubectl_admin() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
crictl_node() { "$CRICTL" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 20s "$@"; }
ctr_node() { "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

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
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

ensure_tools() {
  [ "$(id -u)" = 0 ] || die "hack/cluster.sh must run as root (it runs a kubelet and containers)"
  apt_ensure_no_start etcd-server openssl iproute2 curl kubectl python3 runc \
    containernetworking-plugins iptables conntrack gcc libc6-dev
  local tool
  for tool in etcd openssl ip ss curl kubectl python3 go cargo setsid flock runc iptables \
    ip6tables conntrack gcc mountpoint; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found"
  done
  local plugin
  for plugin in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$plugin" ] || die "CNI plugin /usr/lib/cni/$plugin not found (Debian containernetworking-plugins)"
  done
  check_kernel
}

# The kernel features a node needs, each named when missing.
check_kernel() {
  local c
  for c in cpu cpuacct memory pids devices freezer; do
    [ -d "/sys/fs/cgroup/$c" ] || die "cgroup v1 controller '$c' is not mounted at /sys/fs/cgroup/$c"
  done
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
    modprobe br_netfilter 2>/dev/null ||
    die "kernel feature br_netfilter is missing (/proc/sys/net/bridge/bridge-nf-call-iptables)"
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
    die "kernel feature overlayfs is missing (containerd's snapshotter)"
  iptables -t nat -L >/dev/null 2>&1 || die "iptables nat table unavailable (kube-proxy needs it)"
  ip link add sluice-probe0 type veth peer name sluice-probe1 2>/dev/null ||
    die "kernel feature veth is missing (the CNI bridge plugin needs it)"
  ip link del sluice-probe0 2>/dev/null || true
}

# The pod CIDR must not overlap any address or route of the machine (except our bridge).
check_pod_cidr() {
  local conflicts
  conflicts=$(python3 - "$POD_CIDR" "$BRIDGE" "$SERVICE_CIDR" <<'PY'
import ipaddress, json, subprocess, sys
cidr, bridge, services = ipaddress.ip_network(sys.argv[1]), sys.argv[2], sys.argv[3]
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
    if r.get("type") == "blackhole" and r.get("dst") == services:
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
  running kubelet || { port_free "$KUBELET_PORT" kubelet; port_free "$KUBELET_HEALTHZ_PORT" "kubelet healthz"; }
  running kube-proxy || { port_free "$KUBE_PROXY_METRICS_PORT" "kube-proxy metrics"; port_free "$KUBE_PROXY_HEALTHZ_PORT" "kube-proxy healthz"; }
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
    "subjectAltName=IP:127.0.0.1,IP:$BRIDGE_IP,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN")"
  issue_cert admin "/O=system:masters/CN=kubernetes-admin"
  issue_cert controller-manager "/CN=system:kube-controller-manager"
  issue_cert scheduler "/CN=system:kube-scheduler"
  issue_cert kube-proxy "/CN=system:kube-proxy"
  # The kubelet acts as its node (Node authorizer) and serves its API on the node IP.
  issue_cert node "/O=system:nodes/CN=system:node:$NODE_NAME"
  issue_cert kubelet "/CN=$NODE_NAME" "$(printf '%s\n' \
    'extendedKeyUsage=serverAuth' "subjectAltName=IP:$BRIDGE_IP,DNS:$NODE_NAME")"
  # `kubectl logs/exec`: the apiserver calls the kubelet with this client certificate.
  issue_cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client"
  if [ ! -f "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  write_kubeconfig "$KUBECONFIG_ADMIN" admin
  write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
  write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
  write_kubeconfig "$STATE/kubelet.kubeconfig" node
}

apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -q '^ok$'
}

# Ready condition posted and the node lifecycle controller's not-ready taint gone.
node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] &&
    ! kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.spec.taints}' | grep -q not-ready
}

# --- host network: bridge, safety rules, sysctls -------------------------------------

# Records the host settings once, before anything of ours changes them.
record_host_settings() {
  [ -f "$STATE/host-settings" ] && return 0
  local k
  for k in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$k" "$(sysctl -n "$k" 2>/dev/null || echo unset)"
  done >"$STATE/host-settings.tmp"
  [ -d /var/lib/cni ] && echo "var-lib-cni=present" >>"$STATE/host-settings.tmp"
  [ -d /var/log/containers ] && echo "var-log-containers=present" >>"$STATE/host-settings.tmp"
  # Shim sockets live in /run/containerd/s whatever containerd's own state dir is.
  [ -d /run/containerd ] && echo "run-containerd=present" >>"$STATE/host-settings.tmp"
  mv "$STATE/host-settings.tmp" "$STATE/host-settings"
}

restore_host_settings() {
  [ -f "$STATE/host-settings" ] || return 0
  local k v
  while IFS='=' read -r k v; do
    case $k in
      var-lib-cni | var-log-containers | run-containerd) ;;
      *) [ "$v" = unset ] || sysctl -qw "$k=$v" >/dev/null 2>&1 || log "could not restore $k=$v" ;;
    esac
  done <"$STATE/host-settings"
  grep -q '^var-lib-cni=' "$STATE/host-settings" || rm -rf /var/lib/cni
  grep -q '^var-log-containers=' "$STATE/host-settings" || rmdir /var/log/containers 2>/dev/null || true
  grep -q '^run-containerd=' "$STATE/host-settings" || rm -rf /run/containerd
  rm -f "$STATE/host-settings"
}

# The pod bridge with the node address, created before kubelet (its --node-ip) and
# the apiserver (its advertise address) start; the CNI bridge plugin then uses it.
ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_IP/" || ip addr add "$BRIDGE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# Nothing leaves the machine: a Service address kube-proxy did not translate hits the
# blackhole route; nothing is forwarded between the pod bridge and another interface
# (the CNI bridge plugin turns ip_forward on, which routes for every interface).
ensure_network_safety() {
  ip route show type blackhole | grep -q "^blackhole $SERVICE_CIDR" ||
    ip route add blackhole "$SERVICE_CIDR"
  local ipt
  for ipt in iptables ip6tables; do
    $ipt -N "$FORWARD_CHAIN" 2>/dev/null || true
    $ipt -F "$FORWARD_CHAIN"
    $ipt -A "$FORWARD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
    $ipt -A "$FORWARD_CHAIN" ! -i "$BRIDGE" -o "$BRIDGE" -j DROP
  done
  forward_chain_first
  # No IPv6 on the bridge at all: pods are IPv4-only.
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" >/dev/null 2>&1 || true
  # Bridged pod-to-pod traffic must pass iptables for Service translation and its replies.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 >/dev/null
  # What kubelet would set at start (it refuses nothing then); `down` puts them back.
  sysctl -qw kernel.panic=10 kernel.panic_on_oops=1 vm.overcommit_memory=1 >/dev/null
}

# Our drop rules come before anything else in FORWARD, kube-proxy's jumps included
# (kube-proxy prepends its own once, when missing).
forward_chain_first() {
  local ipt
  for ipt in iptables ip6tables; do
    [ "$($ipt -S FORWARD 2>/dev/null | sed -n 2p)" = "-A FORWARD -j $FORWARD_CHAIN" ] && continue
    while $ipt -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null; do :; done
    $ipt -I FORWARD 1 -j "$FORWARD_CHAIN"
  done
}

remove_network_safety() {
  local ipt
  for ipt in iptables ip6tables; do
    while $ipt -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null; do :; done
    $ipt -F "$FORWARD_CHAIN" 2>/dev/null || true
    $ipt -X "$FORWARD_CHAIN" 2>/dev/null || true
  done
  ip route del blackhole "$SERVICE_CIDR" 2>/dev/null || true
}

# --- node: containerd, kubelet, kube-proxy --------------------------------------------

write_node_config() {
  mkdir -p "$STATE/containerd" "$STATE/cni/net.d" "$STATE/kubelet" "$LOGS/pods"
  cat >"$STATE/containerd/config.toml" <<TOML
# Generated by hack/cluster.sh. Everything of containerd's lives under $STATE.
version = 4
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
temp = "$STATE/containerd/tmp"
imports = []
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.image-verifier.v1.bindir",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[plugins.'io.containerd.server.v1.grpc']
  address = "$CONTAINERD_SOCK"

[plugins.'io.containerd.server.v1.ttrpc']
  address = "$CONTAINERD_SOCK.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$STATE/containerd/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$STATE/containerd/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE: negative OOM scores (Guaranteed pods) are refused.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$STATE/containerd/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/cni/net.d"
TOML
  # Images are loaded, never pulled: every registry is served by a closed loopback port,
  # so a missing image fails at once (ErrImagePull naming it) and nothing is dialed out.
  mkdir -p "$STATE/containerd/certs.d/_default"
  cat >"$STATE/containerd/certs.d/_default/hosts.toml" <<TOML
# Generated by hack/cluster.sh: no registry is reachable from the local cluster.
server = "http://127.0.0.1:9"
[host."http://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
TOML
  # No masquerade and no portmap: pods talk to each other and the host only.
  cat >"$STATE/cni/net.d/10-sluice.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "sluice",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
JSON
  cat >"$STATE/kubelet/config.yaml" <<YAML
# Generated by hack/cluster.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
# This machine runs cgroup v1 (in maintenance mode upstream) and has no swap accounting.
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
# Pods with dnsPolicy Default (CoreDNS itself) get no outside resolver.
resolvConf: ""
podLogsDir: $LOGS/pods
# Images are imported, never pulled: keep them whatever the disk use.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
serializeImagePulls: false
maxPods: 110
YAML
}

containerd_ready() { ctr_node version; }

ensure_infra_images() {
  mkdir -p "$STATE/images"
  local pause="$STATE/images/pause" src="$ROOT/hack/cluster/pause.c"
  if [ ! -x "$pause" ] || [ "$src" -nt "$pause" ]; then
    gcc -static -Os -o "$pause" "$src" || die "building the pause binary (gcc -static) failed"
  fi
  build_scratch_image "$STATE/images/pause.tar" "$PAUSE_IMAGE" "$pause"
  build_scratch_image "$STATE/images/coredns.tar" "$COREDNS_IMAGE" "$COREDNS_BIN" --user 65532:65532
  import_images "$STATE/images/pause.tar" "$STATE/images/coredns.tar"
}

build_scratch_image() {
  local out=$1 ref=$2 binary=$3; shift 3
  [ -f "$out" ] && [ "$out" -nt "$binary" ] && [ "$out" -nt "$ROOT/hack/cluster/scratch-image.py" ] && return 0
  python3 "$ROOT/hack/cluster/scratch-image.py" "$out" "$ref" "$binary" "$@"
}

# Imports image archives into the node, as `kind load image-archive` does; an archive
# already imported with the same content is skipped.
import_images() {
  local archive stamp sum
  mkdir -p "$STATE/images/imported"
  for archive in "$@"; do
    [ -f "$archive" ] || die "image archive $archive not found"
    sum=$(sha256sum "$archive" | cut -c1-16)
    stamp="$STATE/images/imported/$(basename "$archive").$sum"
    [ -f "$stamp" ] && continue
    ctr_node images import --snapshotter overlayfs "$archive" >/dev/null 2>"$STATE/images/import.err" ||
      die "importing image archive $archive into containerd failed: $(grep -v DEPRECATION "$STATE/images/import.err" | tail -1)"
    rm -f "$STATE/images/imported/$(basename "$archive")".*
    touch "$stamp"
    log "imported $(basename "$archive")"
  done
}

# Archives listed by `make images` (target/images/index.txt: "<file> <reference>").
cmd_load_images() {
  running containerd || die "the cluster is not up: run hack/cluster.sh up first"
  local archives=("$@") file ref
  if [ ${#archives[@]} -eq 0 ]; then
    [ -f "$IMAGES_DIR/index.txt" ] || die "no $IMAGES_DIR/index.txt: run 'make images' first"
    while read -r file ref; do
      [ -n "$file" ] && archives+=("$IMAGES_DIR/$file")
    done <"$IMAGES_DIR/index.txt"
  fi
  import_images "${archives[@]}"
}

ensure_rbac_and_addons() {
  # The apiserver reads logs and runs exec through the kubelet API (kubeadm binds the same).
  kubectl_admin apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: sluice-local:apiserver-kubelet-client}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
YAML
  sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|g" \
    -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" "$ROOT/hack/cluster/coredns.yaml" |
    kubectl_admin apply -f - >/dev/null
  # The Gateway API, as a cluster that offers it has it: HTTPRoutes are validated by its
  # own schema and CEL rules. Server-side: the CRDs are too large for the client-side
  # apply annotation.
  kubectl_admin apply --server-side --force-conflicts \
    -f "$("$ROOT/hack/cluster/gateway-api-crds.sh")" >/dev/null
}

coredns_ready() {
  [ "$(kubectl_admin -n kube-system get deploy coredns -o 'jsonpath={.status.readyReplicas}' 2>/dev/null)" = 1 ]
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

# Installs and builds what the cluster runs; changes nothing on the host's network.
cmd_prepare() {
  ensure_tools
  "$ROOT/hack/cluster/build-k8s.sh"
  "$ROOT/hack/cluster/build-node.sh"
  "$ROOT/hack/cluster/build-prometheus.sh"
  "$ROOT/hack/cluster/gateway-api-crds.sh" >/dev/null
}

cmd_up() {
  local t0=$SECONDS
  cmd_prepare
  mkdir -p "$PIDS" "$LOGS" "$STATE/etcd"
  check_ports
  running kubelet || check_pod_cidr
  ensure_pki
  record_host_settings
  ensure_bridge
  ensure_network_safety

  start_component etcd etcd --name sluice --data-dir "$STATE/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "sluice=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for etcd 30 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

  # Binds all addresses so pods reach it through the `kubernetes` Service, which leads
  # to the advertised node address.
  start_component kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 0.0.0.0 --advertise-address "$BRIDGE_IP" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
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

  write_node_config
  # The shim and runc are found on PATH.
  start_component containerd env "PATH=$CONTAINERD_BIN:$PATH" \
    "$CONTAINERD_BIN/containerd" --config "$STATE/containerd/config.toml"
  wait_for containerd 30 containerd_ready
  ensure_infra_images
  [ -f "$IMAGES_DIR/index.txt" ] && cmd_load_images

  start_component kubelet "$K8S_BIN/kubelet" \
    --config "$STATE/kubelet/config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$BRIDGE_IP" --v 1
  # Flags that leave conntrack sysctls and route_localnet alone; metrics on loopback.
  start_component kube-proxy "$K8S_BIN/kube-proxy" \
    --kubeconfig "$STATE/kube-proxy.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --iptables-localhost-nodeports=false \
    --nodeport-addresses "$BRIDGE_IP/32" \
    --metrics-bind-address "127.0.0.1:$KUBE_PROXY_METRICS_PORT" \
    --healthz-bind-address "127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT"
  wait_for kubelet 90 node_ready
  wait_for kube-proxy 30 curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
  forward_chain_first
  ensure_rbac_and_addons
  wait_for kubelet 90 coredns_ready

  write_prometheus_config
  # On all addresses, like the apiserver, so that pods (the controller) reach it at
  # the node address 10.244.0.1.
  start_component prometheus "$PROMETHEUS_BIN" --config.file "$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path "$STATE/prometheus/data" --storage.tsdb.retention.time 1d \
    --web.listen-address "0.0.0.0:$PROMETHEUS_PORT"
  wait_for prometheus 60 curl -fsS --max-time 2 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"

  log "cluster up in $((SECONDS - t0))s: export KUBECONFIG=$KUBECONFIG_ADMIN"
}

# Unmounts every mount point under a path, deepest first.
unmount_under() {
  local prefix=$1 m
  awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# Removes the node's pods (CNI teardown included), containers, shims, mounts, cgroups
# and rules. Pods come back on the next `up`: kubelet recreates them from the API.
teardown_node() {
  if running containerd && [ -x "$CRICTL" ]; then
    crictl_node stopp $(crictl_node pods -q 2>/dev/null) >/dev/null 2>&1 || true
    crictl_node rmp -f $(crictl_node pods -q 2>/dev/null) >/dev/null 2>&1 || true
  fi
  stop_component containerd
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Containers whose shim died leave runc state; their processes are killed with it.
  local root id
  for root in "$STATE"/containerd/runc/*/; do
    [ -d "$root" ] || continue
    for id in $(runc --root "$root" list -q 2>/dev/null); do
      runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
    done
  done
  unmount_under "$STATE/kubelet"
  unmount_under "$STATE/containerd"
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    # Only namespaces whose interfaces sit on our bridge's subnet are ours.
    ip netns exec "$ns" ip -4 addr 2>/dev/null | grep -q 'inet 10\.244\.' || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  remove_cgroups
  rm -rf "$STATE/cni/ipam"
  rm -f /var/lib/cni/results/sluice-* 2>/dev/null || true
  find /var/log/containers -maxdepth 1 -lname "$LOGS/pods/*" -delete 2>/dev/null || true
}

# kubelet's QoS cgroups (kubepods, kubepods/burstable, ...) in every v1 hierarchy.
remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/unified/kubepods; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

remove_node_rules() {
  [ -x "$K8S_BIN/kube-proxy" ] &&
    "$K8S_BIN/kube-proxy" --cleanup --proxy-mode iptables >/dev/null 2>&1 || true
  local ipt table chain
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      # kubelet's KUBE-FIREWALL and canary chains, and anything kube-proxy left.
      $ipt -t "$table" -S 2>/dev/null | awk '$1 == "-A" && $0 ~ /-j KUBE-/ {print}' |
        while read -r rule; do
          # shellcheck disable=SC2086 # the rule is a word list
          $ipt -t "$table" ${rule/-A/-D} 2>/dev/null || true
        done
      for chain in $($ipt -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        $ipt -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $($ipt -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        $ipt -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

cmd_down() {
  stop_component prometheus
  stop_component kube-proxy
  stop_component kubelet
  teardown_node
  stop_component kube-scheduler
  stop_component kube-controller-manager
  stop_component kube-apiserver
  stop_component etcd
  remove_node_rules
  remove_network_safety
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE" 2>/dev/null || true
  restore_host_settings
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
  printf 'kubeconfig  %s\napiserver   https://127.0.0.1:%s (pods: https://kubernetes.default)\nprometheus  http://127.0.0.1:%s (pods: http://%s:%s)\n' \
    "$KUBECONFIG_ADMIN" "$APISERVER_PORT" "$PROMETHEUS_PORT" "$BRIDGE_IP" "$PROMETHEUS_PORT"
  if running kube-apiserver; then
    kubectl_admin get nodes -o wide 2>/dev/null || true
  fi
  return $rc
}

cmd_env() {
  printf 'export KUBECONFIG=%s\n' "$KUBECONFIG_ADMIN"
  printf 'export SLUICE_PROMETHEUS_URL=http://127.0.0.1:%s\n' "$PROMETHEUS_PORT"
  # The same Prometheus as pods (e.g. the controller) reach it.
  printf 'export SLUICE_PROMETHEUS_POD_URL=http://%s:%s\n' "$BRIDGE_IP" "$PROMETHEUS_PORT"
  printf 'export CONTAINER_RUNTIME_ENDPOINT=unix://%s\n' "$CONTAINERD_SOCK"
  printf 'export PATH=%s:$PATH\n' "$(dirname "$CRICTL")"
}

case "${1:-}" in
  prepare) cmd_prepare ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  reset) cmd_down; log "removing $STATE"; rm -rf "$STATE" ;;
  env) cmd_env ;;
  load-images) shift; cmd_load_images "$@" ;;
  *) die "usage: hack/cluster.sh prepare|up|down|status|reset|env|load-images [ARCHIVE...]" ;;
esac
