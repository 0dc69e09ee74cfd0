#!/usr/bin/env bash
# Measures pod start on the local cluster's node: the time from a pod's creation (its
# ADDED watch event) to Ready=True (the MODIFIED event that carries it), both stamped
# when the watch delivers them, for ROUNDS rollouts of a REPLICAS-replica Deployment of
# the sluice-demo image with a 1 s readiness probe. Prints median and p95. Not a test.
#   hack/bench-pods.sh            (ROUNDS=3 REPLICAS=10 by default)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
eval "$(./hack/cluster.sh env)"
ROUNDS=${ROUNDS:-3}
REPLICAS=${REPLICAS:-10}
ns=bench-pods
kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$ns" >/dev/null
trap 'kill "$watcher" 2>/dev/null; kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1' EXIT

out=$(mktemp)
python3 - "$ns" >"$out" <<'PY' &
import json, subprocess, sys, time
ns = sys.argv[1]
watch = subprocess.Popen(["kubectl", "-n", ns, "get", "pods", "-w", "--output-watch-events", "-o", "json"],
                         stdout=subprocess.PIPE, text=True)
decoder, buf, added, done = json.JSONDecoder(), "", {}, set()
for line in watch.stdout:
    buf += line
    while True:
        buf = buf.lstrip()
        try:
            event, end = decoder.raw_decode(buf)
        except json.JSONDecodeError:
            break
        buf = buf[end:]
        now, pod = time.monotonic(), event["object"]
        uid = pod["metadata"]["uid"]
        if event["type"] == "ADDED" and uid not in added:
            added[uid] = now
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod.get("status", {}).get("conditions", []))
        if ready and uid in added and uid not in done:
            done.add(uid)
            print(f"{now - added[uid]:.3f}", flush=True)
PY
watcher=$!
sleep 2
for round in $(seq 1 "$ROUNDS"); do
  kubectl apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: start}
spec:
  replicas: $REPLICAS
  selector: {matchLabels: {app: start}}
  template:
    metadata: {labels: {app: start}, annotations: {round: "$round"}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: ghcr.io/sluice-dev/sluice-demo:v1
        env: [{name: LISTEN, value: "0.0.0.0:8080"}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
YAML
  t0=$SECONDS
  until [ "$(wc -l <"$out")" -ge $((round * REPLICAS)) ]; do
    [ $((SECONDS - t0)) -lt 120 ] || die "round $round: pods not ready in 120 s"
    sleep 0.5
  done
  kubectl delete deployment -n "$ns" start --wait=true >/dev/null
  until [ -z "$(kubectl get pods -n "$ns" -o name)" ]; do sleep 0.5; done
done
python3 - "$out" <<'PY'
import statistics, sys
v = sorted(float(x) for x in open(sys.argv[1]))
p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
print(f"pod created -> Ready over {len(v)} pods: median {statistics.median(v):.2f} s, "
      f"p95 {p95:.2f} s, min {v[0]:.2f} s, max {v[-1]:.2f} s")
PY
