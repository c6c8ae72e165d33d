#!/usr/bin/env bash
# Installs what flatnet's build, lab and tests need on a fresh Debian machine:
# Debian packages (nftables: the oracle of internal/nft's tests, the tests'
# look into the kernel, and the reference portmap plugin's nftables backend —
# flatnetd itself talks netlink; iproute2 and curl to look around inside the
# lab)
# and the Go modules of both modules. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1; then
	echo "setup: Go is not on PATH (expected at /usr/local/go/bin); install Go 1.26 first" >&2
	exit 1
fi

need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "setup: need root to install ${need[*]}" >&2
		exit 1
	fi
	echo "setup: installing ${need[*]} ..."
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "setup: downloading Go modules ..."
go mod download
(cd lab/controlplane && go mod download)
