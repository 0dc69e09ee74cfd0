#!/usr/bin/env bash
# Lints the chart and checks that it renders the CRDs crdgen wrote.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
helm=$(./hack/ensure-helm.sh)
"$helm" lint --strict charts/sluice
rendered=$("$helm" template sluice charts/sluice --set installIstioCRDs=true)
for crd in crds/*.yaml charts/sluice/istio-crds/*.yaml; do
  name=$(awk '/^  name:/{print $2; exit}' "$crd")
  grep -q "name: $name\$" <<<"$rendered" || die "the chart does not render CRD $name"
done
if "$helm" template sluice charts/sluice --set installCRDs=false | grep -q 'kind: CustomResourceDefinition'; then
  die "installCRDs=false still renders CRDs"
fi
