package cnitest

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// Suite is what a package of real-kernel tests shares: the plugins it
// built, the prefix of every namespace it makes, and why it skips.
type Suite struct {
	PluginDir string // flatnet-cni and the reference plugins asked for
	Prefix    string // fn-<tag><pid>-: every namespace a test makes starts with it
	skip      string
	serial    atomic.Int32
}

// NewSuite names the suite's namespaces fn-<tag><pid>-...
func NewSuite(tag string) *Suite {
	return &Suite{Prefix: fmt.Sprintf("fn-%s%d-", tag, os.Getpid()%100000)}
}

// Main is the body of TestMain: without root every test skips with the
// reason; otherwise it builds flatnet-cni and the reference plugins named
// (see BuildReference) into a temporary directory, runs the tests, and
// fails the run when a namespace with the suite's prefix is left behind
// (removing it).
func (s *Suite) Main(m *testing.M, reference ...string) int {
	if os.Geteuid() != 0 {
		s.skip = "real-kernel tests need root (network namespaces, veth, bridges, nftables)"
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "flatnet-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := BuildFlatnet(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if len(reference) > 0 {
		if err := BuildReference(dir, reference...); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	s.PluginDir = dir
	code := m.Run()
	if left, _ := netns.List(s.Prefix); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "LEAK: network namespaces left behind: %v\n", left)
		for _, n := range left {
			_ = netns.Delete(n)
		}
		return 1
	}
	return code
}

// Require skips t when the suite cannot run (not root).
func (s *Suite) Require(t *testing.T) {
	t.Helper()
	if s.skip != "" {
		t.Skip(s.skip)
	}
}

// NewName is a name no other test of the suite has: prefix and a serial.
func (s *Suite) NewName() string { return fmt.Sprintf("%s%d", s.Prefix, s.serial.Add(1)) }
