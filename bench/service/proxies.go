package main

import (
	"fmt"
	"os"
	"path/filepath"
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
	table    string // what to remove after it stopped: nft table or iptables
	argv     func(l lab.Layout, bin string) []string
}

func proxies() []proxyUnderTest {
	kubeProxy := func(mode string) func(l lab.Layout, bin string) []string {
		return func(l lab.Layout, bin string) []string {
			return []string{filepath.Join(bin, "flatnet-controlplane"), "kube-proxy",
				"--kubeconfig=" + l.Kubeconfig("flatnetd-node-1"), "--hostname-override=node-1",
				"--proxy-mode=" + mode, "--cluster-cidr=" + lab.ClusterCIDRs(),
				"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256",
				// leave the machine-wide conntrack limits alone
				"--conntrack-max-per-core=0", "--conntrack-min=0",
				"--v=1"}
		}
	}
	return []proxyUnderTest{
		{name: "flatnet", process: "flatnetd-node-1", metrics: "127.0.0.1:9466",
			fullSync: "flatnet_proxy_sync_duration_seconds", table: "ip flatnet-proxy",
			argv: func(l lab.Layout, bin string) []string { return l.AgentArgs(bin, 1, true) }},
		{name: "kube-proxy-nftables", process: "bench-kube-proxy", metrics: "127.0.0.1:10249",
			fullSync: "kubeproxy_sync_full_proxy_rules_duration_seconds", table: "nftables", argv: kubeProxy("nftables")},
		{name: "kube-proxy-iptables", process: "bench-kube-proxy", metrics: "127.0.0.1:10249",
			fullSync: "kubeproxy_sync_proxy_rules_duration_seconds", table: "iptables", argv: kubeProxy("iptables")},
	}
}

// startOn runs the proxy on node-1 (flatnetd there is restarted with or
// without its proxy, so that exactly one proxy programs the node).
func startOn(l lab.Layout, bin string, p proxyUnderTest) (int, error) {
	l.StopProcess("flatnetd-node-1", 10*time.Second)
	if p.name != "flatnet" {
		if err := l.StartProcess("flatnetd-node-1", "node-1", l.AgentArgs(bin, 1, false)); err != nil {
			return 0, err
		}
	}
	if err := l.StartProcess(p.process, "node-1", p.argv(l, bin)); err != nil {
		return 0, err
	}
	b, err := os.ReadFile(l.Path("pids", p.process))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// stop ends the proxy and removes what it programmed, so the next one starts
// from a clean node (and flatnetd runs without a proxy meanwhile).
func stop(l lab.Layout, bin string, p proxyUnderTest) error {
	l.StopProcess(p.process, 15*time.Second)
	node := netns.Path(l.NS("node-1"))
	switch p.table {
	case "ip flatnet-proxy":
		_ = runIn(node, "nft", "delete", "table", "ip", "flatnet-proxy")
		_ = runIn(node, "nft", "delete", "table", "ip6", "flatnet-proxy")
	default:
		mode := "nftables"
		if p.table == "iptables" {
			mode = "iptables"
		}
		_ = runIn(node, filepath.Join(bin, "flatnet-controlplane"), "kube-proxy", "--cleanup", "--proxy-mode="+mode)
	}
	if p.name == "flatnet" {
		return l.StartProcess("flatnetd-node-1", "node-1", l.AgentArgs(bin, 1, false))
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
