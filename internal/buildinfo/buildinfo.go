// Package buildinfo holds the version stamped into every flatnet binary.
package buildinfo

// Version is set at link time: -ldflags "-X github.com/flatnet-io/flatnet/internal/buildinfo.Version=v0.1.0".
var Version = "dev"
