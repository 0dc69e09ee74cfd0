#!/usr/bin/env bash
# make demo: a full canary release on the local cluster, with live traffic.
#
# Builds the images (make images), brings the local cluster up (hack/cluster.sh up) and
# loads them into its node, installs sluice with its Helm chart, deploys the catalog app
# (v1), webapp and a Canary with provider sluice in namespace $DEMO_NS, then runs
# sluice-demo-live: webapp calls http://catalog/items by name at a steady
# rate (through cluster DNS, kube-proxy and the sluice-router), release v1 -> v2
# (promoted) and a faulty v3 (rolled back), one line per step. Leaves the cluster up.
# Re-running starts again from a fresh $DEMO_NS namespace.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
DEMO_NS=${DEMO_NS:-demo}
START=$(date +%s)
since() { echo "$(($(date +%s) - START)) s"; }
stage() { log "$* ($(since) so far)"; }
# Runs a command with a deadline; on failure prints what to look at and stops.
bounded() {
  local secs=$1 what=$2; shift 2
  timeout "$secs" "$@" || die "$what failed or took longer than $secs s (exit $?); $(hint)"
}
hint() { echo "look at: kubectl -n $DEMO_NS get pods,canary; kubectl -n $DEMO_NS describe canary catalog-release; kubectl -n sluice-system logs deploy/sluice-controller"; }

[ "$(id -u)" = 0 ] || die "the demo needs root (the local cluster gives each pod a network namespace)"
rust_ensure

stage "1/6 building the images (make images), kubectl-sluice and the demo's live view"
prepare_in_background "$ROOT/target/demo-prepare.log"
# kubectl-sluice and sluice-demo-live come out of the images' cargo build: static
# binaries that run on the host, with no second build of the dependencies.
SLUICE_HOST_TOOLS=1 ./hack/images.sh
TOOLS=$ROOT/target/x86_64-unknown-linux-gnu/${SLUICE_IMAGE_PROFILE:-image}
wait_for_prepare
HELM=$(./hack/ensure-helm.sh)

stage "2/6 starting the local cluster (hack/cluster.sh up) and loading the images"
./hack/cluster.sh up
./hack/cluster.sh load-images
eval "$(./hack/cluster.sh env)"

stage "3/6 installing sluice with its Helm chart into sluice-system"
bounded 60 "applying the CRDs" kubectl apply --server-side --force-conflicts \
  -f crds/ -f charts/sluice/istio-crds/ >/dev/null
controller_archive=$(awk '$2 ~ /\/sluice-controller:/ {print $1; exit}' target/images/index.txt)
image_sum=$(sha256sum "target/images/$controller_archive" | cut -c1-16)
reuse=()
# Keep the values of an existing install (e.g. the e2e tests'): only a rebuilt image
# rolls the controller, as a new tag would.
"$HELM" status sluice -n sluice-system >/dev/null 2>&1 && reuse=(--reuse-values)
bounded 240 "helm upgrade --install sluice" "$HELM" upgrade --install sluice charts/sluice \
  -n sluice-system --create-namespace "${reuse[@]}" --set installCRDs=false \
  --set-string "podAnnotations.sluice\.dev/image-archive=$image_sum" --wait --timeout 180s >/dev/null
bounded 120 "the controller rollout" kubectl -n sluice-system rollout status deploy/sluice-controller --timeout=110s >/dev/null

stage "4/6 deploying the catalog app (v1), webapp and the Canary in namespace $DEMO_NS"
if kubectl get namespace "$DEMO_NS" >/dev/null 2>&1; then
  log "deleting the namespace $DEMO_NS of an earlier run"
  bounded 150 "deleting namespace $DEMO_NS" kubectl delete namespace "$DEMO_NS" --timeout=140s >/dev/null
fi
kubectl create namespace "$DEMO_NS" >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: catalog, namespace: $DEMO_NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: catalog}}
  template:
    metadata: {labels: {app: catalog}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: catalog
        image: ghcr.io/sluice-dev/sluice-demo:v1
        env:
        - {name: LISTEN, value: "0.0.0.0:3000"}
        - {name: NAME, value: catalog}
        - {name: CATALOG, value: "true"}
        readinessProbe: {httpGet: {path: /healthz, port: 3000}, periodSeconds: 1}
---
# webapp calls catalog by its Service name for every request it serves.
apiVersion: apps/v1
kind: Deployment
metadata: {name: webapp, namespace: $DEMO_NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: webapp}}
  template:
    metadata: {labels: {app: webapp}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: webapp
        image: ghcr.io/sluice-dev/sluice-demo:v1
        env:
        - {name: LISTEN, value: "0.0.0.0:8080"}
        - {name: NAME, value: webapp}
        - {name: UPSTREAM_URIS, value: "http://catalog/items"}
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: sluice.dev/v1beta1
kind: Canary
metadata: {name: catalog-release, namespace: $DEMO_NS}
spec:
  provider: sluice          # sluice-router (sluice-proxy) enforces the VirtualService
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: catalog}
  progressDeadlineSeconds: 60
  service: {name: catalog, port: 80, targetPort: 3000}
  analysis:
    interval: 5s            # one step every 5 s
    threshold: 2            # rolled back after 2 failed checks
    stepWeight: 10
    maxWeight: 50
    metrics:                # no metricsServer: the controller scrapes the router itself
    # 15 s windows: with 5 s steps, a longer one would still count the previous release.
    - {name: request-success-rate, thresholdRange: {min: 99}, interval: 15s}
    - {name: request-duration, thresholdRange: {max: 500}, interval: 15s}
EOF
bounded 150 "waiting for the Canary to be Initialized" \
  kubectl -n "$DEMO_NS" wait canary/catalog-release --for=jsonpath='{.status.phase}'=Initialized --timeout=140s >/dev/null
bounded 100 "waiting for the sluice-router" kubectl -n "$DEMO_NS" rollout status deploy/sluice-router --timeout=90s >/dev/null
bounded 100 "waiting for webapp" kubectl -n "$DEMO_NS" rollout status deploy/webapp --timeout=90s >/dev/null
kubectl -n "$DEMO_NS" get canary,deploy

stage "5/6 releasing with live traffic"
live_start=$(date +%s)
timeout 600 "$TOOLS/sluice-demo-live" --namespace "$DEMO_NS" \
  || die "the live demo failed (exit $?; 124 = it ran over 10 minutes); $(hint)"
live=$(($(date +%s) - live_start))

webapp_ip=$(kubectl -n "$DEMO_NS" get pods -l app=webapp -o jsonpath='{.items[0].status.podIP}')
stage "6/6 done: whole demo $(since), live part ${live} s"
cat <<EOF

The cluster is still up. To look around:

  export KUBECONFIG=$KUBECONFIG
  kubectl -n $DEMO_NS get canary -o wide
  kubectl -n $DEMO_NS describe canary catalog-release      # one event per decision
  kubectl -n $DEMO_NS get virtualservice catalog -o yaml
  kubectl -n $DEMO_NS port-forward deploy/sluice-router 15000 &   # the router's admin port,
  curl -s http://127.0.0.1:15000/config/routes              # ... its live routes (local only)
  curl -s http://$webapp_ip:8080/                             # webapp, which calls http://catalog/items
  kubectl -n $DEMO_NS set env deploy/catalog ERROR_RATE-    # v3 without the fault: a new release
  kubectl -n $DEMO_NS get canary -w                         # ... followed step by step
  export PATH=$TOOLS:\$PATH   # puts kubectl-sluice on PATH:
  kubectl sluice -n $DEMO_NS get catalog-release -w         # the release as a live tree
  kubectl sluice -n $DEMO_NS pause catalog-release          # also: resume, promote, abort, retry

Prometheus (scrapes the router and the controller): $SLUICE_PROMETHEUS_URL
  curl -sG $SLUICE_PROMETHEUS_URL/api/v1/query \
    --data-urlencode 'query=sum by (destination_workload, response_code) (istio_requests_total{namespace="$DEMO_NS"})'
Stop the cluster with: hack/cluster.sh down   (make demo again starts it and a fresh demo)
EOF
