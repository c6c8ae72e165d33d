#!/usr/bin/env bash
# CNI ADD/DEL latency: flatnet-cni against bridge + host-local, same run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
./scripts/setup.sh
exec go run ./bench/cni "$@"
