// Package buildinfo holds the version stamped into every flatnet binary.
package buildinfo

// Release is the version this tree is released as, and the tag of the image
// that deploy/ runs (ghcr.io/flatnet-io/flatnet:<Release>). Bump it and the
// manifests together; a test in deploy/ holds them equal.
const Release = "v0.1.0"

// Version is set at link time: -ldflags "-X github.com/flatnet-io/flatnet/internal/buildinfo.Version=v0.1.0".
var Version = "dev"
