package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// Processes starts, finds and stops the long-running processes of one lab.
// Each runs detached in its own session, logs to <state>/logs/<name>.log,
// has its pid in <state>/pids/<name> and carries the mark envProcess; a
// process is the lab's when it carries a mark of the lab, runs in one of
// the lab's namespaces or names the state directory on its command line.
type Processes struct {
	layout Layout // the namespaces they run in, the state directory
}

// NewProcesses returns the processes of the lab l names.
func NewProcesses(l Layout) Processes { return Processes{layout: l} }

// component is one long-running process of the lab.
type component struct {
	name string   // log and pid file name
	ns   string   // namespace role, "" for the machine's namespace
	argv []string // program and arguments
}

// envProcess marks every process the lab starts; its value is the path of
// the process's pid file, which names the lab and the component. The
// environment is in place from the process's first instruction (nsexec's
// helper passes it on when it execs the program), so a process is found
// even when `lab up` died before writing its pid file.
const envProcess = "FLATNET_LAB_PROCESS"

func (p Processes) pidFile(name string) (string, error) { return under(p.layout.Dir, "pids", name) }

// Start starts a detached process of the lab in the namespace of role ("" for
// the machine's), logging to <state>/logs/<name>.log; it is a no-op when one
// of that name runs. `lab down` stops it with the rest.
func (p Processes) Start(name, role string, argv []string) error {
	return p.start(component{name: name, ns: role, argv: argv})
}

// Stop stops the process of that name (SIGTERM, SIGKILL after grace).
func (p Processes) Stop(name string, grace time.Duration) {
	pid, ok := p.running(name)
	if !ok {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if _, ok := p.running(name); !ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// start launches c detached unless it is already running. Its output goes
// to <state>/logs/<name>.log.
func (p Processes) start(c component) error {
	l := p.layout
	pidPath, err := p.pidFile(c.name)
	if err != nil {
		return fmt.Errorf("process name: %w", err)
	}
	logPath, err := under(l.Dir, "logs", c.name+".log")
	if err != nil {
		return fmt.Errorf("process name: %w", err)
	}
	if pid, ok := p.running(c.name); ok {
		return recordPid(pidPath, pid) // the pid file may be the one thing lost
	}
	for _, d := range []string{filepath.Dir(pidPath), filepath.Dir(logPath)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
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
	cmd.Env = append(os.Environ(), envProcess+"="+pidPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = l.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return recordPid(pidPath, pid)
}

// recordPid writes pid to the pid file unless it says so already.
func recordPid(path string, pid int) error {
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		return nil
	}
	return writeFile(path, []byte(strconv.Itoa(pid)), 0o644)
}

// running reports whether the process of component name is alive: the one
// its pid file names, if that carries the component's mark (or, started
// before processes were marked, no mark but belongs to the lab), or else
// one found by its mark.
func (p Processes) running(name string) (int, bool) {
	pidPath, err := p.pidFile(name)
	if err != nil {
		return 0, false
	}
	mark := envProcess + "=" + pidPath
	if b, err := os.ReadFile(pidPath); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && alive(pid) {
			env := environ(pid)
			if slices.Contains(env, mark) || !hasVar(env, envProcess) && p.owns(pid) {
				return pid, true
			}
		}
	}
	if pids := marked(mark); len(pids) > 0 {
		return pids[0], true
	}
	return 0, false
}

// marked lists the live processes whose environment holds mark, leaving
// out those whose parent holds it too: the children that inherit it (nft
// under flatnetd, CNI plugins under the kubelet) are not the component.
func marked(mark string) []int {
	var out []int
	for _, pid := range allPids() {
		if !alive(pid) || !slices.Contains(environ(pid), mark) {
			continue
		}
		if _, ppid, err := readStat(pid); err == nil && ppid > 0 && slices.Contains(environ(ppid), mark) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// owns reports whether pid belongs to this lab: it carries the mark of one
// of the lab's processes, runs in one of the lab's namespaces or names the
// lab's state directory on its command line.
func (p Processes) owns(pid int) bool {
	dir := p.layout.Dir
	if !alive(pid) {
		return false
	}
	for _, e := range environ(pid) {
		if strings.HasPrefix(e, envProcess+"="+dir+"/") {
			return true
		}
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if strings.Contains(string(cmdline), dir+"/") || strings.Contains(string(cmdline), dir+"\x00") {
		return true
	}
	link, err := netns.Of(pid)
	if err != nil {
		return false
	}
	_, ok := p.namespaceInodes()[link]
	return ok
}

// namespaceInodes maps "net:[inode]" of each lab namespace to its name.
func (p Processes) namespaceInodes() map[string]string {
	out := map[string]string{}
	names, _ := p.layout.Namespaces()
	for _, n := range names {
		if id, err := netns.ID(netns.Path(n)); err == nil {
			out[id] = n
		}
	}
	return out
}

// readStat returns the state and the parent of pid from /proc/<pid>/stat.
func readStat(pid int) (byte, int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, errors.New("bad stat")
	}
	fields := strings.Fields(string(b[i+2:]))
	if len(fields) < 2 {
		return 0, 0, errors.New("bad stat")
	}
	ppid, err := strconv.Atoi(fields[1])
	return b[i+2], ppid, err
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	st, _, err := readStat(pid)
	return err == nil && st != 'Z'
}

// environ is the environment of pid, one "KEY=value" per element.
func environ(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

func hasVar(env []string, key string) bool {
	return slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, key+"=") })
}

// allPids lists the processes on the machine but this one.
func allPids() []int {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != self {
			out = append(out, pid)
		}
	}
	return out
}

// all lists every live process of the lab.
func (p Processes) all() []int {
	return slices.DeleteFunc(allPids(), func(pid int) bool { return !p.owns(pid) })
}

// stopAll sends SIGTERM to every process of the lab, waits up to grace, then
// SIGKILLs what is left.
func (p Processes) stopAll(grace time.Duration) {
	for _, pid := range p.all() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(p.all()) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	for range 20 {
		left := p.all()
		if len(left) == 0 {
			return
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
