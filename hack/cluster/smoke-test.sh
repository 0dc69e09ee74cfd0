#!/usr/bin/env bash
# End-to-end check of the local cluster: a 2-replica Deployment of the test image runs
# as processes in pod network namespaces, serves HTTP on its pod IPs, is listed in an
# EndpointSlice and discovered by Prometheus, `kubectl logs` works, and scaling to 0
# stops the processes.
# Leaves the cluster as it found it (stopped clusters are stopped again).
source "$(dirname "$0")/../lib.sh"

CLUSTER="$ROOT/hack/cluster.sh"
NS=sluice-smoke-$$
TIMEOUT=${SMOKE_TIMEOUT:-90}
PROMETHEUS_PORT=${SLUICE_PROMETHEUS_PORT:-19090}
PASSED=0
FAILED=0

was_up=false
"$CLUSTER" status >/dev/null 2>&1 && was_up=true
had_state=false
[ -d "$ROOT/.cluster" ] && had_state=true

cleanup() {
  local rc=$?
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  if $was_up; then
    :
  elif $had_state; then
    "$CLUSTER" down
  else
    "$CLUSTER" reset
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
eval "$("$CLUSTER" env)"

kubectl create namespace "$NS" >/dev/null
kubectl apply -n "$NS" -f - >/dev/null <<'YAML'
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
      containers:
      - name: http
        image: sluice-test-http:smoke
        env: [{name: PORT, value: "8080"}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: http}
          periodSeconds: 1
---
# Headless, so no ClusterIP is allocated (and none is ever dialed).
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http}]
YAML

ready_pod_ips() {
  kubectl get pods -n "$NS" -l app=web -o \
    'jsonpath={range .items[*]}{.status.podIP} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk '$2 == "True" && $1 ~ /^10\.244\./ {print $1}'
}
two_ready() { [ "$(ready_pod_ips | wc -l)" = 2 ]; }
check "2 pods Ready with 10.244 IPs" eventually two_ready
mapfile -t IPS < <(ready_pod_ips)
# containerID is sluice://<podIP>/<pid>: the process to watch for on scale-down.
mapfile -t PIDS < <(kubectl get pods -n "$NS" -l app=web \
  -o 'jsonpath={range .items[*]}{.status.containerStatuses[0].containerID}{"\n"}{end}' | sed 's|.*/||')
log "pod IPs: ${IPS[*]}; container pids: ${PIDS[*]}"
# Every later check is about these two pods; without them they would pass vacuously.
if [ ${#IPS[@]} != 2 ] || [ ${#PIDS[@]} != 2 ]; then
  kubectl get pods -n "$NS" -o wide >&2 || true
  die "expected 2 ready pods with a process each, got IPs '${IPS[*]}', pids '${PIDS[*]}'; see $ROOT/.cluster/logs/node-agent.log"
fi

for ip in "${IPS[@]}"; do
  check "HTTP 200 from pod $ip" eventually curl -fsS --max-time 2 -o /dev/null "http://$ip:8080/"
done

logs_show_requests() { kubectl logs -n "$NS" deployment/web --tail=20 | grep -q '"GET / HTTP/1.1" 200'; }
check "kubectl logs shows the served requests" eventually logs_show_requests

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

kubectl scale deployment web -n "$NS" --replicas=0 >/dev/null
no_pods() { [ -z "$(kubectl get pods -n "$NS" -l app=web -o name)" ]; }
check "pods deleted after scaling to 0" eventually no_pods
no_processes() {
  local pid
  for pid in "${PIDS[@]}"; do [ -d "/proc/$pid" ] && return 1; done
  return 0
}
check "test processes gone" eventually no_processes
namespaces_gone() {
  local ip
  for ip in "${IPS[@]}"; do
    # No namespace answers on the old pod IPs any more.
    curl -fsS --max-time 1 -o /dev/null "http://$ip:8080/" 2>/dev/null && return 1
  done
  return 0
}
check "pod IPs no longer serve" namespaces_gone

log "local cluster smoke test: $PASSED checks ok, $FAILED checks failed"
[ "$FAILED" = 0 ]
