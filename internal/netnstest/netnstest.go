// Package netnstest runs a test's kernel work in a throwaway network
// namespace: created under a name that says whose it is
// (fn-<prefix><pid>), deleted when the test ends, pass or fail. Only the
// calling goroutine's thread is in the namespace while f runs: t.Run
// inside f would run its subtest on another thread, outside it.
package netnstest

import (
	"fmt"
	"os"
	"testing"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Run runs f inside a new network namespace, skipping the test when it
// cannot make one (not root), and fails the test with f's error.
func Run(t *testing.T, prefix string, f func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	name := fmt.Sprintf("fn-%s%d", prefix, os.Getpid()%100000)
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete(name) })
	if err := netns.Do(path, f); err != nil {
		t.Fatal(err)
	}
}
