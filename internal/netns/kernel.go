package netns

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Handle opens a netlink handle on the namespace at path, so that links,
// addresses and routes there are read and changed without any thread
// entering it. The caller closes it.
func Handle(path string) (*netlink.Handle, error) {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return h, nil
}

// ID is the identity of the namespace at path as /proc shows a process's
// ("net:[<inode>]").
func ID(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("net:[%d]", st.Ino), nil
}

// Of is the identity of process pid's network namespace (see ID).
func Of(pid int) (string, error) { return os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net") }

// Processes lists the processes, other than this one, whose network
// namespace is the one at path.
func Processes(path string) []int {
	want, err := ID(path)
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if id, err := Of(pid); err == nil && id == want {
			out = append(out, pid)
		}
	}
	return out
}
