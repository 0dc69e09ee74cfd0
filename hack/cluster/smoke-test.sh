#!/usr/bin/env bash
# End-to-end check of the local cluster's real node: a 2-replica Deployment of the
# sluice-demo image (from `make images`) runs as containers under its securityContext
# and limits, serves HTTP on its pod IPs, is listed in an EndpointSlice and discovered
# by Prometheus; a client pod calls it by Service name in all three forms (cluster DNS
# and kube-proxy), a name outside the cluster does not resolve; `kubectl logs` and
# `exec` work; scaling to 0 removes the containers. When the cluster was not up before,
# `down` must leave nothing of ours behind on the host, and that is checked too.
source "$(dirname "$0")/../lib.sh"

CLUSTER="$ROOT/hack/cluster.sh"
STATE=${SLUICE_CLUSTER_DIR:-$ROOT/.cluster}
NS=sluice-smoke-$$
TIMEOUT=${SMOKE_TIMEOUT:-90}
PROMETHEUS_PORT=${SLUICE_PROMETHEUS_PORT:-19090}
DEMO_IMAGE=ghcr.io/sluice-dev/sluice-demo:v1
PASSED=0
FAILED=0

was_up=false
"$CLUSTER" status >/dev/null 2>&1 && was_up=true
had_state=false
[ -d "$STATE" ] && had_state=true

# What the host looks like before the cluster, to compare with after `down`.
# (A subshell without -e/pipefail: an empty grep is a fine answer here.)
host_snapshot() (
  set +e +o pipefail
  sysctl kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward \
    net.bridge.bridge-nf-call-iptables 2>/dev/null
  ip -o link show | awk -F': ' '{print "link " $2}' | sed 's/@.*//' | sort
  ip route show table all 2>/dev/null | grep -v '^local\|^broadcast\|^multicast\|^ff00\|^fe80' | sort
  ip netns list 2>/dev/null | awk '{print "netns " $1}' | sort
  for ipt in iptables ip6tables; do
    for t in filter nat mangle; do $ipt -t "$t" -S 2>/dev/null | sed "s/^/$ipt $t /"; done
  done | sort
  # kubepods cgroups in every hierarchy; mounts of the cluster's state dir.
  find /sys/fs/cgroup -maxdepth 2 -name 'kubepods*' 2>/dev/null | sort
  awk -v p="$STATE" 'index($5, p) == 1 {print "mount " $5}' /proc/self/mountinfo | sort
  ps -eo comm= | grep -E '^(containerd|kubelet|kube-|etcd|pause|sluice-|coredns|prometheus)' | sed 's/^/process /' | sort -u
)
if ! $was_up; then
  # Installed first, so packages and kernel modules are not counted as our leftovers;
  # `down` then clears anything an interrupted earlier run left (it is idempotent).
  "$CLUSTER" prepare
  "$CLUSTER" down >/dev/null
  host_snapshot >"/tmp/sluice-smoke-host-before.$$"
fi

cleanup() {
  local rc=$?
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  if ! $was_up; then
    "$CLUSTER" down
    # The state dir may go; the host must be as before.
    host_snapshot >"/tmp/sluice-smoke-host-after.$$"
    if diff "/tmp/sluice-smoke-host-before.$$" "/tmp/sluice-smoke-host-after.$$" >&2; then
      log "ok: down left nothing of ours on the host (sysctls, links, routes, netns, iptables, cgroups, mounts, processes)"
    else
      log "FAILED: down left the differences above on the host"
      rc=1
    fi
    rm -f "/tmp/sluice-smoke-host-before.$$" "/tmp/sluice-smoke-host-after.$$"
    $had_state || "$CLUSTER" reset >/dev/null
  fi
  exit $rc
}
trap cleanup EXIT

check() {
  local what=$1; shift
  if "$@"; then
    log "ok: $what"; PASSED=$((PASSED + 1))
  else
    log "FAILED: $what"; FAILED=$((FAILED + 1))
  fi
}

# Polls a command for up to TIMEOUT seconds.
eventually() {
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 1
  done
}

t0=$SECONDS
"$CLUSTER" up
log "cluster up took $((SECONDS - t0))s"
"$CLUSTER" load-images
eval "$("$CLUSTER" env)"

kubectl create namespace "$NS" >/dev/null
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080"}
    spec:
      terminationGracePeriodSeconds: 5
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: http
        image: $DEMO_IMAGE
        env: [{name: LISTEN, value: "0.0.0.0:8080"}, {name: NAME, value: web}]
        ports: [{name: http, containerPort: 8080}]
        resources:
          requests: {cpu: 50m, memory: 32Mi}
          limits: {cpu: 500m, memory: 64Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
# Calls web by each form of its name, and a name outside the cluster, per request.
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: client
    image: $DEMO_IMAGE
    env:
    - {name: LISTEN, value: "0.0.0.0:8080"}
    - {name: NAME, value: client}
    - {name: UPSTREAM_URIS, value: "http://web/a,http://web.$NS/b,http://web.$NS.svc.cluster.local/c,http://outside.invalid/d"}
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
YAML

ready_pod_ips() {
  kubectl get pods -n "$NS" -l app=web -o \
    'jsonpath={range .items[*]}{.status.podIP} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 == "True" && $1 ~ /^10\.244\./ {print $1}'
}
two_ready() { [ "$(ready_pod_ips | wc -l)" = 2 ]; }
check "2 pods Ready with 10.244 IPs" eventually two_ready
mapfile -t IPS < <(ready_pod_ips)
mapfile -t CONTAINERS < <(kubectl get pods -n "$NS" -l app=web \
  -o 'jsonpath={range .items[*]}{.status.containerStatuses[0].containerID}{"\n"}{end}' | sed 's|^containerd://||')
log "pod IPs: ${IPS[*]}; containers: ${CONTAINERS[*]}"
# Every later check is about these two pods; without them they would pass vacuously.
if [ ${#IPS[@]} != 2 ] || [ ${#CONTAINERS[@]} != 2 ]; then
  kubectl get pods -n "$NS" -o wide >&2 || true
  kubectl describe pods -n "$NS" >&2 || true
  die "expected 2 ready pods with a container each, got IPs '${IPS[*]}', containers '${CONTAINERS[*]}'; see $STATE/logs/kubelet.log"
fi

for ip in "${IPS[@]}"; do
  check "HTTP 200 from pod $ip" eventually curl -fsS --max-time 2 -o /dev/null "http://$ip:8080/"
done

# The container's process, as the kernel sees it: the securityContext and the limits hold.
container_pid() { crictl inspect -o go-template --template '{{.info.pid}}' "$1" 2>/dev/null; }
runs_as_65532() {
  local pid
  pid=$(container_pid "${CONTAINERS[0]}") && [ -n "$pid" ] &&
    awk '/^Uid:/ {exit !($2 == 65532 && $3 == 65532)}' "/proc/$pid/status"
}
check "the container runs as uid 65532 (the image's user, runAsNonRoot)" runs_as_65532
no_capabilities() {
  local pid
  pid=$(container_pid "${CONTAINERS[0]}") && awk '/^CapEff:/ {exit !($2 == "0000000000000000")}' "/proc/$pid/status"
}
check "the container has no effective capabilities (drop ALL)" no_capabilities
read_only_root() {
  local pid
  pid=$(container_pid "${CONTAINERS[0]}") && awk '$2 == "/" {exit !($4 ~ /^ro(,|$)/)}' "/proc/$pid/mountinfo"
}
check "the container's root filesystem is read-only" read_only_root
memory_limit_64mi() {
  local pid cg
  pid=$(container_pid "${CONTAINERS[0]}") || return 1
  cg=$(awk -F: '$2 == "memory" {print $3}' "/proc/$pid/cgroup")
  [ "$(cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes")" = $((64 * 1024 * 1024)) ]
}
check "the memory limit (64Mi) is the container's cgroup limit" memory_limit_64mi
cpu_limit_500m() {
  local pid cg
  pid=$(container_pid "${CONTAINERS[0]}") || return 1
  cg=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' "/proc/$pid/cgroup")
  [ "$(cat "/sys/fs/cgroup/cpu,cpuacct$cg/cpu.cfs_quota_us" 2>/dev/null || cat "/sys/fs/cgroup/cpu$cg/cpu.cfs_quota_us")" = 50000 ]
}
check "the CPU limit (500m) is the container's CFS quota" cpu_limit_500m
qos_burstable() { [ "$(kubectl get pods -n "$NS" -l app=web -o 'jsonpath={.items[0].status.qosClass}')" = Burstable ]; }
check "QoS class Burstable" qos_burstable

# By name from a pod: CoreDNS answers, kube-proxy translates the ClusterIP.
client_ip() { kubectl get pod -n "$NS" client -o 'jsonpath={.status.podIP}'; }
client_answer() { curl -fsS --max-time 5 "http://$(client_ip):8080/"; }
calls_by_name() {
  python3 -c '
import json, sys
calls = {c["uri"]: c for c in json.load(sys.stdin)["upstream_calls"]}
ns = sys.argv[1]
for uri in ("http://web/a", f"http://web.{ns}/b", f"http://web.{ns}.svc.cluster.local/c"):
    c = calls[uri]
    assert c["code"] == 200 and c["response"]["name"] == "web", c
outside = calls["http://outside.invalid/d"]
assert outside["code"] == -1, outside
' "$NS" < <(client_answer)
}
check "a pod calls web, web.$NS and web.$NS.svc.cluster.local; outside.invalid does not resolve" eventually calls_by_name

logs_show_start() { kubectl logs -n "$NS" deployment/web --tail=50 | grep -q 'listening'; }
check "kubectl logs shows the container's output" eventually logs_show_start
exec_runs() { kubectl exec -n "$NS" client -- /sluice-demo --help | grep -qi 'usage'; }
check "kubectl exec runs a command in the container" exec_runs

slice_lists_pods() {
  local listed
  listed=$(kubectl get endpointslices -n "$NS" -l kubernetes.io/service-name=web \
    -o 'jsonpath={range .items[*].endpoints[*]}{.addresses[0]}{"\n"}{end}' | sort)
  [ "$listed" = "$(printf '%s\n' "${IPS[@]}" | sort)" ]
}
check "EndpointSlice lists both pod IPs" eventually slice_lists_pods

prometheus_sees_pods() {
  local targets
  targets=$(curl -fsS --max-time 2 "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/targets") || return 1
  for ip in "${IPS[@]}"; do grep -q "\"$ip:8080\"" <<<"$targets" || return 1; done
}
check "Prometheus discovered both pods as scrape targets" eventually prometheus_sees_pods

# An image that was never loaded: the pull fails at once against the closed loopback
# "registry", and the pod's events name the image.
kubectl run -n "$NS" missing --image=ghcr.io/sluice-dev/not-loaded:0 --restart=Never >/dev/null
pull_refused() {
  kubectl get events -n "$NS" --field-selector involvedObject.name=missing -o 'jsonpath={.items[*].message}' |
    grep -q 'ghcr.io/sluice-dev/not-loaded:0.*127.0.0.1:9'
}
check "a pod whose image was not loaded fails to pull it, named, from loopback only" eventually pull_refused
kubectl delete pod -n "$NS" missing --wait=false >/dev/null

kubectl scale deployment web -n "$NS" --replicas=0 >/dev/null
no_pods() { [ -z "$(kubectl get pods -n "$NS" -l app=web -o name)" ]; }
check "pods deleted after scaling to 0" eventually no_pods
no_containers() {
  local id
  for id in "${CONTAINERS[@]}"; do crictl inspect "$id" >/dev/null 2>&1 && return 1; done
  return 0
}
check "their containers are gone from containerd" eventually no_containers
pod_ips_silent() {
  local ip
  for ip in "${IPS[@]}"; do
    curl -fsS --max-time 1 -o /dev/null "http://$ip:8080/" 2>/dev/null && return 1
  done
  return 0
}
check "pod IPs no longer serve" pod_ips_silent

log "local cluster smoke test: $PASSED checks ok, $FAILED checks failed"
[ "$FAILED" = 0 ]
