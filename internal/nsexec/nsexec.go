// Package nsexec starts programs inside a network namespace. A Go process
// cannot move itself into another network namespace (the runtime's threads
// would be split between namespaces), so the program re-executes its own
// binary with a marker argument; that fresh process locks its only relevant
// thread, setns(2)s into the namespace and execve(2)s the target, which then
// starts life entirely inside the namespace. Only the network namespace
// changes: the filesystem, PIDs and users stay the machine's, as for
// processes of a pod in the lab.
//
// A binary that uses Command must call MaybeRun first thing in main.
package nsexec

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

const marker = "__flatnet_nsexec"

// Command returns a command that runs name with args inside the network
// namespace at nsPath. name is looked up in PATH inside the new process.
func Command(nsPath, name string, args ...string) *exec.Cmd {
	return exec.Command("/proc/self/exe", append([]string{marker, nsPath, name}, args...)...)
}

// CommandContext is Command bound to ctx: the process is killed when ctx ends.
func CommandContext(ctx context.Context, nsPath, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "/proc/self/exe", append([]string{marker, nsPath, name}, args...)...)
}

// MaybeRun enters the namespace and execs the target when this process was
// started by Command; otherwise it returns at once.
func MaybeRun() {
	if len(os.Args) < 4 || os.Args[1] != marker {
		return
	}
	runtime.LockOSThread()
	if err := enterAndExec(os.Args[2], os.Args[3], os.Args[3:]); err != nil {
		fmt.Fprintf(os.Stderr, "nsexec: %v\n", err)
		os.Exit(127)
	}
}

func enterAndExec(nsPath, name string, argv []string) error {
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", nsPath, err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", nsPath, err)
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return err
	}
	return unix.Exec(path, argv, os.Environ())
}
