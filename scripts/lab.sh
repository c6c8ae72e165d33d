#!/usr/bin/env bash
# The main job: bring up a 3-node lab (the real upstream control plane, nodes as
# network namespaces, flatnet-cni and flatnetd on each), deploy six agnhost
# netexec pods and show cross-node pod traffic with no NAT. The lab stays up;
# `bin/flatnet lab down` removes it. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
./scripts/setup.sh
./scripts/build.sh
./scripts/build-controlplane.sh
./bin/flatnet lab up --nodes "${NODES:-3}"
./bin/flatnet lab traffic
echo
KUBECONFIG=$(./bin/flatnet lab kubeconfig) ./bin/kubectl get nodes,pods -o wide -A
