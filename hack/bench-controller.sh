#!/usr/bin/env bash
# Measures the controller on the local cluster: reconcile time and API writes for one
# canary release (provider istio, no metric checks, 2s steps). Not a test: prints numbers.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
eval "$(./hack/cluster.sh env)"
ns=bench-controller
kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
# Fresh counters: restart the controller and wait for it.
kubectl -n sluice-system rollout restart deploy/sluice-controller >/dev/null
kubectl -n sluice-system rollout status deploy/sluice-controller --timeout=120s >/dev/null
ip=$(kubectl -n sluice-system get pods -l app.kubernetes.io/name=sluice -o jsonpath='{range .items[*]}{.status.podIP} {.metadata.deletionTimestamp}{"\n"}{end}' | awk 'NF==1{print $1; exit}')
metrics() { curl -s --max-time 3 "http://$ip:8080/metrics"; }
value() { metrics | awk -v m="$1" '$1==m{print $2}'; }
kubectl create namespace "$ns" >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: $ns}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - {name: app, image: ghcr.io/sluice-dev/sluice-demo:v1, env: [{name: LISTEN, value: "0.0.0.0:8080"}, {name: V, value: "1"}]}
---
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {name: app, namespace: $ns}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: app}
  service: {port: 80, targetPort: 8080}
  analysis: {interval: 2s, threshold: 1, maxWeight: 50, stepWeight: 10}
YAML
kubectl -n "$ns" wait canary/app --for=condition=promoted --timeout=120s >/dev/null
r0=$(value sluice_reconcile_duration_seconds_count); s0=$(value sluice_reconcile_duration_seconds_sum); w0=$(value sluice_api_writes_total)
t0=$SECONDS
kubectl -n "$ns" set env deploy/app V=2 >/dev/null
until [ "$(kubectl -n "$ns" get canary app -o jsonpath='{.status.phase}')" = Succeeded ]; do
  [ $((SECONDS - t0)) -lt 180 ] || die "release did not finish in 180s"
  sleep 0.5
done
r1=$(value sluice_reconcile_duration_seconds_count); s1=$(value sluice_reconcile_duration_seconds_sum); w1=$(value sluice_api_writes_total)
steps=9   # Progressing 0,10..50, Promoting, Finalising, Succeeded
awk -v r="$((r1 - r0))" -v s0="$s0" -v s1="$s1" -v w="$((w1 - w0))" -v steps=$steps -v secs=$((SECONDS - t0)) 'BEGIN {
  s = s1 - s0
  printf "release: %d s, %d reconciles, mean reconcile %.2f ms, %d API writes (%.1f per step of %d)\n", secs, r, 1000*s/r, w, w/steps, steps }'
kubectl delete namespace "$ns" --wait=false >/dev/null
