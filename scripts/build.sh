#!/usr/bin/env bash
# Builds bin/flatnet-cni, bin/flatnetd and bin/flatnet.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
go build -ldflags "-X github.com/flatnet-io/flatnet/internal/buildinfo.Version=${version}" -o bin/ ./cmd/...
