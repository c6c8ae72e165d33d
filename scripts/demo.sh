#!/usr/bin/env bash
# The main job today: build flatnet, make a node and three pods out of network
# namespaces, wire them with flatnet-cni through libcni, ping between them,
# clean up. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
./scripts/setup.sh
./scripts/build.sh
exec ./bin/flatnet demo "$@"
