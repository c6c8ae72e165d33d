#!/usr/bin/env bash
# The whole test suite: formatting, vet, unit tests, the real-kernel CNI tests
# and the end-to-end tests on a 3-node lab (both need root; they skip with a
# reason otherwise), with the race detector. Pass -short for unit tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
./scripts/build.sh
if [[ ${1:-} == -short ]]; then
	exec go test -race -count=1 ./internal/...
fi
./scripts/build-controlplane.sh
go test -race -count=1 -timeout 60m ./...
