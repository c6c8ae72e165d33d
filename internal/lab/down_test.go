package lab

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// requireRoot skips a test that makes network namespaces unless it runs as
// root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// testLabName is a lab name of this test process, so that parallel runs of
// the package do not meet; suffix tells the labs of one test apart.
func testLabName(suffix string) string {
	return fmt.Sprintf("ut%d%s", os.Getpid(), suffix)
}

// newTestLayout is the layout of a lab of this test under a temporary state
// root; its namespaces are removed when the test ends, pass or fail.
func newTestLayout(t *testing.T, name string, nodes int) Layout {
	t.Helper()
	l, err := NewLayout(t.TempDir(), name, nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		names, _ := netns.List(l.Prefix())
		for _, n := range names {
			_ = netns.Delete(n)
		}
	})
	return l
}

// TestDownLeavesOtherLabs: lab "x" and lab "x-b" share the prefix "fn-x-";
// `lab down` of x must neither delete x-b's namespaces nor kill the
// processes in them.
func TestDownLeavesOtherLabs(t *testing.T) {
	requireRoot(t)
	other := newTestLayout(t, testLabName("-b"), 1)
	l := newTestLayout(t, testLabName(""), 1)
	for _, n := range []string{l.NS("switch"), l.NS("node-1"), l.PodNS("node-1", "0f6b5a3e-7c1d-4e2f-9a8b-1c2d3e4f5a6b"),
		other.NS("switch"), other.NS("cp"), other.NS("node-1")} {
		if _, err := netns.Create(n); err != nil {
			t.Fatal(err)
		}
	}
	sleeper := exec.Command("ip", "netns", "exec", other.NS("cp"), "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	t.Cleanup(func() { _ = sleeper.Process.Kill(); <-exited })
	time.Sleep(200 * time.Millisecond) // until ip has entered the namespace and exec'd sleep

	if slices.Contains(NewProcesses(l).all(), sleeper.Process.Pid) {
		t.Errorf("lab %s counts pid %d, which runs in lab %s", l.Name, sleeper.Process.Pid, other.Name)
	}
	if err := Down(filepath.Dir(l.Dir), l.Name, io.Discard); err != nil {
		t.Fatal(err)
	}
	if left, _ := netns.List(l.Prefix()); !slices.Equal(left, []string{other.NS("cp"), other.NS("node-1"), other.NS("switch")}) {
		t.Errorf("after down of %s, namespaces %s* are %v, want only those of %s", l.Name, l.Prefix(), left, other.Name)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		t.Errorf("down of %s killed a process of %s: %v", l.Name, other.Name, err)
	case <-time.After(200 * time.Millisecond):
	}
}
