// Package sysctl sets kernel parameters under /proc/sys. The network ones
// (/proc/sys/net/...) belong to the network namespace of the thread that
// opens the file, so EnsureIn enters a namespace to set one there.
//
// A value is written only when it differs: the common case reads one file,
// and a read-only /proc/sys (a container's) fails only when a change is
// really needed.
package sysctl

import (
	"bytes"
	"fmt"
	"os"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Ensure sets the parameter at path (e.g. /proc/sys/net/ipv4/ip_forward) to
// value unless it has it already.
func Ensure(path, value string) error {
	cur, err := os.ReadFile(path)
	if err == nil && string(bytes.TrimSpace(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s=%s: %w", path, value, err)
	}
	return nil
}

// EnsureIn is Ensure as seen from inside the network namespace at nsPath.
func EnsureIn(nsPath, path, value string) error {
	return netns.Do(nsPath, func() error { return Ensure(path, value) })
}
