package lab

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// processesRunning lists the session leaders whose command line is exactly
// argv: each start makes one (a shell's forked child has the shell's command
// line until it execs, but not its own session).
func processesRunning(argv []string) []int {
	want := []byte{}
	for _, a := range argv {
		want = append(append(want, a...), 0)
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && alive(pid) && bytes.Equal(b, want) && sessionLeader(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// sleeper is a component that runs until killed and has a child of its own
// (which inherits its environment, as flatnetd's nft does).
func sleeper(t *testing.T, l Layout) component {
	c := component{name: "sleeper", argv: []string{"/bin/sh", "-c", "sleep 60 & wait", l.Dir}}
	t.Cleanup(func() {
		for _, pid := range processesRunning(c.argv) {
			_ = syscall.Kill(-pid, syscall.SIGKILL) // its session: sh and sleep
		}
	})
	return c
}

// startSleeper starts a sleeper of lab l and returns it with the one
// process it made.
func startSleeper(t *testing.T, l Layout) (component, []int) {
	t.Helper()
	c := sleeper(t, l)
	if err := NewProcesses(l).start(c); err != nil {
		t.Fatal(err)
	}
	first := processesRunning(c.argv)
	if len(first) != 1 {
		t.Fatalf("%d copies after the first start, want 1", len(first))
	}
	return c, first
}

// TestStartFindsProcessWithoutPidFile: `lab up` killed between starting a
// process and writing its pid file must not get a second copy on the next
// run.
func TestStartFindsProcessWithoutPidFile(t *testing.T) {
	l := newTestLayout(t, testLabName(""), 1)
	c, first := startSleeper(t, l)
	if err := os.Remove(l.Path("pids", c.name)); err != nil {
		t.Fatal(err)
	}
	if err := NewProcesses(l).start(c); err != nil {
		t.Fatal(err)
	}
	if got := processesRunning(c.argv); len(got) != 1 {
		t.Fatalf("copies after a start without pid file: %v, want only %v", got, first)
	}
	if pid, ok := NewProcesses(l).running(c.name); !ok || pid != first[0] {
		t.Errorf("running(%s) = %d, %v; want %d, true", c.name, pid, ok, first[0])
	}
}

// TestStartAfterExit: a component whose process is gone is started again.
func TestStartAfterExit(t *testing.T) {
	l := newTestLayout(t, testLabName(""), 1)
	c, first := startSleeper(t, l)
	_ = syscall.Kill(-first[0], syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	// until the whole group is gone: its sleep child, reparented while it
	// dies, still carries the component's mark
	for time.Now().Before(deadline) {
		if _, ok := NewProcesses(l).running(c.name); !ok && len(processesRunning(c.argv)) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := NewProcesses(l).start(c); err != nil {
		t.Fatal(err)
	}
	if got := processesRunning(c.argv); len(got) != 1 || got[0] == first[0] {
		t.Fatalf("after the process died: %v, want one new process", got)
	}
}

func sessionLeader(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(fields) > 3 && fields[3] == strconv.Itoa(pid)
}
