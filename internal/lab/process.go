package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// component is one long-running process of the lab.
type component struct {
	name string   // log and pid file name
	ns   string   // namespace role, "" for the machine's namespace
	argv []string // program and arguments
}

// start launches c detached unless it is already running. Its output goes
// to <state>/logs/<name>.log.
func (l Layout) start(c component) error {
	if pid, ok := l.running(c.name); ok {
		_ = pid
		return nil
	}
	if err := os.MkdirAll(l.Path("logs"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(l.Path("pids"), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(l.Path("logs", c.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	var cmd *exec.Cmd
	if c.ns == "" {
		cmd = exec.Command(c.argv[0], c.argv[1:]...)
	} else {
		cmd = nsexec.Command(netns.Path(l.NS(c.ns)), c.argv[0], c.argv[1:]...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = l.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return os.WriteFile(l.Path("pids", c.name), []byte(strconv.Itoa(pid)), 0o644)
}

// running reports whether the process recorded for name is alive and ours.
func (l Layout) running(name string) (int, bool) {
	b, err := os.ReadFile(l.Path("pids", name))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false
	}
	return pid, l.owns(pid)
}

// owns reports whether pid belongs to this lab: it runs in one of the lab's
// namespaces or names the lab's state directory on its command line.
func (l Layout) owns(pid int) bool {
	if st, err := readStat(pid); err != nil || st == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if strings.Contains(string(cmdline), l.Dir+"/") || strings.Contains(string(cmdline), l.Dir+"\x00") {
		return true
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return false
	}
	_, ok := l.namespaceInodes()[link]
	return ok
}

// namespaceInodes maps "net:[inode]" of each lab namespace to its name.
func (l Layout) namespaceInodes() map[string]string {
	out := map[string]string{}
	names, _ := l.Namespaces()
	for _, n := range names {
		var st syscall.Stat_t
		if err := syscall.Stat(netns.Path(n), &st); err == nil {
			out[fmt.Sprintf("net:[%d]", st.Ino)] = n
		}
	}
	return out
}

func readStat(pid int) (byte, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0, errors.New("bad stat")
	}
	return b[i+2], nil
}

// processes lists every live process of the lab.
func (l Layout) processes() []int {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if l.owns(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// stopAll sends SIGTERM to every process of the lab, waits up to grace, then
// SIGKILLs what is left.
func (l Layout) stopAll(grace time.Duration) {
	for _, pid := range l.processes() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(l.processes()) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	for range 20 {
		left := l.processes()
		if len(left) == 0 {
			return
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends one component.
func (l Layout) stop(name string, grace time.Duration) {
	pid, ok := l.running(name)
	if !ok {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if _, ok := l.running(name); !ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func binPath(binDir, name string) string { return filepath.Join(binDir, name) }
