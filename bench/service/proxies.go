package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// proxyUnderTest is one service proxy that can run on node-1.
type proxyUnderTest struct {
	name    string
	process string // lab process name
	metrics string // metrics address inside node-1
	// the metric with full-sync durations (sum and count are read)
	fullSync string
	mode     string // kube-proxy's --proxy-mode; "" for flatnet
	argv     func(l lab.Layout, bin string) []string
}

func proxies() []proxyUnderTest {
	kubeProxy := func(mode, fullSync string) proxyUnderTest {
		return proxyUnderTest{name: "kube-proxy-" + mode, process: "bench-kube-proxy", metrics: "127.0.0.1:10249",
			fullSync: fullSync, mode: mode,
			argv: func(l lab.Layout, bin string) []string { return kubeProxyArgs(l, bin, mode) }}
	}
	return []proxyUnderTest{
		{name: "flatnet", process: "flatnetd-node-1", metrics: "127.0.0.1:9466",
			fullSync: "flatnet_proxy_sync_duration_seconds",
			argv:     func(l lab.Layout, bin string) []string { return lab.AgentArgs(l, bin, 1, true) }},
		kubeProxy("nftables", "kubeproxy_sync_full_proxy_rules_duration_seconds"),
		kubeProxy("iptables", "kubeproxy_sync_proxy_rules_duration_seconds"),
	}
}

// kubeProxyArgs is kube-proxy's command line as kubeadm's DaemonSet runs it:
// its own identity (system:kube-proxy, bound to ClusterRole
// system:node-proxier by the API server's bootstrap RBAC), the node's name,
// the cluster's pod CIDRs (kubeadm's clusterCIDR is the pod subnet) and
// every other setting at its default (metrics on 127.0.0.1:10249, healthz
// on 0.0.0.0:10256, conntrack limit max(32768 per core, 131072), TCP
// timeouts established 24 h and CLOSE_WAIT 1 h).
//
// The one exception: the conntrack limit and hash size are the machine's,
// not node-1's (a namespace cannot write them), and kube-proxy only raises
// them. Where they are below what it would set, it gets
// --conntrack-max-per-core=0 so that it neither fails nor changes the
// machine; it says so in the log.
func kubeProxyArgs(l lab.Layout, bin, mode string) []string {
	args := []string{filepath.Join(bin, "flatnet-controlplane"), "kube-proxy",
		"--kubeconfig=" + l.Kubeconfig(lab.KubeProxyIdentity), "--hostname-override=node-1",
		"--proxy-mode=" + mode, "--cluster-cidr=" + lab.ClusterCIDRs(), "--v=1"}
	want := min(max(32768*runtime.NumCPU(), 131072), 1<<20)
	limit, err1 := readInt("/proc/sys/net/netfilter/nf_conntrack_max")
	hash, err2 := readInt("/sys/module/nf_conntrack/parameters/hashsize")
	if err1 != nil || err2 != nil || limit < want || hash < want/4 {
		fmt.Printf("    machine conntrack limit %d, hash size %d (kube-proxy would set %d, %d): kube-proxy runs with --conntrack-max-per-core=0\n",
			limit, hash, want, want/4)
		args = append(args, "--conntrack-max-per-core=0")
	}
	return args
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// prepare makes node-1 ready for proxy p: flatnetd there is restarted
// without its proxy unless p is flatnet (so that exactly one proxy
// programs the node), then resetNode. It returns the tables resetNode had
// to delete.
func prepare(l lab.Layout, bin string, p proxyUnderTest) ([]string, error) {
	procs := lab.NewProcesses(l)
	procs.Stop("flatnetd-node-1", 10*time.Second)
	if p.name != "flatnet" {
		if err := procs.Start("flatnetd-node-1", "node-1", lab.AgentArgs(l, bin, 1, false)); err != nil {
			return nil, err
		}
	}
	return resetNode(netns.Path(l.NS("node-1")))
}

// launch starts proxy p on node-1 and returns its pid.
func launch(l lab.Layout, bin string, p proxyUnderTest) (int, error) {
	if err := lab.NewProcesses(l).Start(p.process, "node-1", p.argv(l, bin)); err != nil {
		return 0, err
	}
	return readInt(l.Path("pids", p.process))
}

// stop ends the proxy and cleans up after it as an operator switching
// proxies would (kube-proxy --cleanup; flatnetd keeps its table across
// restarts, so resetNode deletes it before the next proxy starts), and
// runs flatnetd without a proxy meanwhile.
func stop(l lab.Layout, bin string, p proxyUnderTest) error {
	procs := lab.NewProcesses(l)
	procs.Stop(p.process, 15*time.Second)
	if p.mode != "" {
		_ = runIn(netns.Path(l.NS("node-1")), filepath.Join(bin, "flatnet-controlplane"), "kube-proxy", "--cleanup", "--proxy-mode="+p.mode)
	}
	if p.name == "flatnet" {
		return procs.Start("flatnetd-node-1", "node-1", lab.AgentArgs(l, bin, 1, false))
	}
	return nil
}

func runIn(nsPath, name string, args ...string) error {
	cmd := nsexec.Command(nsPath, name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}

// rss is the resident set size of a process, in MiB.
func rss(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// cpuSeconds is the CPU time (user + system) process pid has used so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces, in parentheses):
	// utime and stime are the 12th and 13th, in clock ticks (100 per second).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100
}

// settle waits until the control plane is idle again after the Services
// were created (kube-apiserver and kube-controller-manager together below a
// third of a core over 5 s; at most 3 minutes): its work would otherwise
// fall on whichever proxy is measured first.
func settle(l lab.Layout) time.Duration {
	start := time.Now()
	var pids []int
	for _, name := range []string{"kube-apiserver", "kube-controller-manager"} {
		if b, err := os.ReadFile(l.Path("pids", name)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	used := func() float64 {
		total := 0.0
		for _, pid := range pids {
			total += cpuSeconds(pid)
		}
		return total
	}
	for time.Since(start) < 3*time.Minute {
		before := used()
		time.Sleep(5 * time.Second)
		if (used()-before)/5 < 0.3 {
			break
		}
	}
	return time.Since(start)
}
