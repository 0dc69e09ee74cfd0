#!/usr/bin/env bash
# The demo: a full canary release on a local cluster.
source "$(dirname "$0")/lib.sh"
die "the demo needs the local cluster (hack/cluster.sh), which is not in this tree yet"
