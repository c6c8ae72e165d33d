#!/usr/bin/env bash
# Service proxy benchmark: flatnetd against upstream kube-proxy v1.37.2 in
# nftables and iptables mode, one at a time on a 2-node lab. Takes a while:
# it creates the Services through the API server (10,000 by default).
# Flags go to `go run ./bench/service` (e.g. -services 1000,10000,30000;
# -name names the lab, -pairs and -round set the connection-rate runs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
./scripts/setup.sh
missing=()
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables) # kube-proxy's iptables mode
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)       # node-1 reset between proxies (-F), flows in the log (-L)
command -v sysctl >/dev/null 2>&1 || missing+=(procps)             # the same kernel settings for every proxy
if ((${#missing[@]})); then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
./scripts/build.sh
./scripts/build-controlplane.sh
exec go run ./bench/service "$@"
