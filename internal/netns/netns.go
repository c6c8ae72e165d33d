// Package netns creates, finds and removes named network namespaces, the
// same way `ip netns` does, so that `ip netns list` and `ip netns exec` see
// them.
//
// Design notes (the state left on the machine):
//
//   - A named namespace is a bind mount of a namespace file onto
//     /run/netns/<name>; it lives until Delete unmounts and removes it, even
//     with no process inside. Everything flatnet creates carries a prefix
//     (fn-...) so leftovers can be listed and removed by name.
//   - Creation unshares a fresh namespace on a dedicated, locked OS thread
//     that is thrown away afterwards (the goroutine exits still locked, so the
//     Go runtime terminates the thread): no other goroutine ever runs in a
//     namespace it did not ask for.
//   - Do runs a function with the calling goroutine's thread inside a named
//     namespace and restores it after; children started with os/exec from
//     inside fn inherit that namespace.
package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are mounted, as with iproute2.
const RunDir = "/run/netns"

// Path is the file of a named namespace.
func Path(name string) string { return filepath.Join(RunDir, name) }

// Create makes a new named network namespace and returns its path. The
// loopback interface inside is brought up.
func Create(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("invalid namespace name %q", name)
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", RunDir, err)
	}
	path := Path(name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	_ = f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount %s: %w", path, err)
			return
		}
		errc <- setLoopbackUp()
	}()
	if err := <-errc; err != nil {
		_ = Delete(name)
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	return path, nil
}

// Delete unmounts and removes a named namespace; a missing one is not an error.
func Delete(name string) error {
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// List returns the named namespaces whose names start with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", RunDir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// DeleteAll deletes every named namespace whose name starts with prefix and
// returns how many there were; it goes on past errors and joins them.
func DeleteAll(prefix string) (int, error) {
	names, err := List(prefix)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, Delete(n))
	}
	return len(names), errors.Join(errs...)
}

// Do runs fn on the calling goroutine with its OS thread inside the
// namespace at path, then switches back.
func Do(path string, fn func() error) error {
	ns, err := cnins.GetNS(path)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer ns.Close()
	return ns.Do(func(cnins.NetNS) error { return fn() })
}

// setLoopbackUp brings up lo in the current thread's namespace.
func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}
