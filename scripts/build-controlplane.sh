#!/usr/bin/env bash
# Builds bin/flatnet-controlplane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl) from upstream Kubernetes v1.37.2 in its
# own Go module, lab/controlplane. The first build takes several minutes on a
# 2-core machine; later ones are cached. `go build -v` prints each package as
# it compiles, so the first build shows its progress.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "build: flatnet-controlplane from k8s.io/kubernetes v1.37.2 (first build: ~7 minutes) ..."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! (cd lab/controlplane && go build -v -o ../../bin/flatnet-controlplane . 2>&1 | tee "$log" |
	awk '{n++; if (n % 100 == 0) printf "build: %d packages compiled\n", n; fflush()}'); then
	cat "$log" >&2
	exit 1
fi
ln -sf flatnet-controlplane bin/kubectl
echo "build: bin/flatnet-controlplane ready (bin/kubectl -> it)"
