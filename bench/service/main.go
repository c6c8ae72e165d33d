// Command service benchmarks the service proxy against upstream kube-proxy
// v1.37.2 in nftables and iptables mode, on a 2-node lab: the same API
// server and the same Services, one proxy at a time on node-1. Backends are
// two netexec pods on node-2; every benchmark Service points at them, so
// every Service works.
//
// Each proxy runs as on a real node: kube-proxy as system:kube-proxy (bound
// to system:node-proxier by the API server's bootstrap RBAC) with kubeadm's
// settings (see kubeProxyArgs); before each proxy starts, node-1 loses every
// table and conntrack entry an earlier one left and gets the same kernel
// settings (resetNode).
//
// Per size (number of Services present) and proxy it reports: time from the
// proxy's start to a working ClusterIP; the proxy's own full-sync duration
// where it exports one; its RSS; network programming latency (create a
// Service -> first connection through its ClusterIP from node-1, p50/p99;
// the probes use source ports of their own, see prober); a warm-up, one
// connection through the ClusterIP from every source port of node-1 and of
// a pod, all of which must work or the proxy gets no row (see warmUp); the
// rate of new TCP connections through a ClusterIP and straight to the pod,
// from node-1 itself (DNAT and masquerade, as upstream) and from a pod on
// node-1 (DNAT only): 2 workers pinned to CPUs, RST close, pairs of short
// rounds, one each way, the median round and the median ratio of the pairs
// with a 95 % confidence interval (see rateRuns and connector); and the
// proxy's CPU use meanwhile.
//
// Run as root: go run ./bench/service [-services 1000,10000] [-proxies ...].
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nsexec"
)

type row struct {
	size                  int
	proxy                 string
	startToWorking        time.Duration
	fullSync              float64 // seconds, from the proxy's metric; 0 unknown
	rssMiB                float64
	latP50, latP99        time.Duration
	warmNode, warmPod     warmup // warm-up sweeps through the ClusterIP
	viaVIP, direct        rate   // client: node-1 itself (DNAT and masquerade, as upstream)
	podVIP, podDirect     rate   // client: a pod on node-1 (DNAT only)
	vsDirect, podVsDirect ratio  // via ClusterIP / straight to the pods, median of paired rounds
	createdIn             time.Duration
	programmingFailures   error
	forbidden             int     // lines of the proxy's log with "forbidden": it lacked RBAC
	mem                   *memory // with -memory
}

// measured reports whether the row has connection rates: a proxy whose
// warm-up connections failed, or that was refused what it asked the API
// server for, gets none.
func (r row) measured() bool { return r.warmNode.ok() && r.warmPod.ok() && r.forbidden == 0 }

func main() {
	nsexec.MaybeRun() // the lab starts its processes by re-executing this binary
	os.Exit(run())
}

func run() int {
	sizes := flag.String("services", "1000,10000", "numbers of Services present, comma-separated")
	only := flag.String("proxies", "flatnet,kube-proxy-nftables,kube-proxy-iptables", "proxies to measure")
	samples := flag.Int("samples", 30, "programming-latency samples per proxy and size")
	pairs := flag.Int("pairs", 96, "connection-rate pairs of rounds per client, proxy and size")
	round := flag.Duration("round", 250*time.Millisecond, "length of one connection-rate round")
	keep := flag.Bool("keep", false, "leave the lab up afterwards")
	name := flag.String("name", "bench", "name of the lab the benchmark runs (and takes down)")
	memoryOnly := flag.Bool("memory", false, "measure start->working, full sync and memory only (flatnet: RSS 3 s, 30 s and 120 s after working, Go heap after a GC, a heap profile in the lab's state directory)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the Service benchmark needs root (it runs a lab)")
		return 1
	}
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	root, err := cnitest.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin := filepath.Join(root, "bin")
	o := lab.Options{Name: *name, Nodes: 2, StateRoot: lab.DefaultStateRoot, BinDir: bin, SourceDir: root, NoProxy: true, Out: os.Stdout}
	if !*keep {
		defer func() { _ = lab.Down(o.StateRoot, o.Name, os.Stdout) }()
	}
	if err := lab.Up(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, err := setUp(ctx, o, rateRuns{pairs: *pairs, round: *round, workers: 2})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b.memoryOnly = *memoryOnly
	rows, err := b.measureAll(*sizes, *only, *samples)
	if b.memoryOnly {
		reportMemory(rows)
	} else {
		report(rows, b.runs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// bench is what every measurement needs: the lab, its client, the
// backends and where the clients run.
type bench struct {
	ctx                     context.Context
	o                       lab.Options
	l                       lab.Layout
	c                       kubernetes.Interface
	ips                     []string // the pods behind every benchmark Service
	direct                  []string // the same, ip:port
	nodeNS, serverNS, podNS string   // node-1, node-2, the client pod on node-1
	probe                   *prober
	runs                    rateRuns
	memoryOnly              bool
}

// setUp deploys the backends on node-2 and the client pod on node-1.
func setUp(ctx context.Context, o lab.Options, runs rateRuns) (*bench, error) {
	l, err := lab.Open(o.StateRoot, o.Name)
	if err != nil {
		return nil, err
	}
	c, err := lab.Client(l)
	if err != nil {
		return nil, err
	}
	b := &bench{ctx: ctx, o: o, l: l, c: c, runs: runs,
		nodeNS: netns.Path(l.NS("node-1")), serverNS: netns.Path(l.NS("node-2"))}
	pods, err := backends(ctx, c)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		b.ips = append(b.ips, p.Status.PodIP)
		b.direct = append(b.direct, net.JoinHostPort(p.Status.PodIP, "8080"))
	}
	clients, err := pinnedPods(ctx, c, "client", "node-1", 1)
	if err != nil {
		return nil, err
	}
	b.podNS = l.PodNetNS(&clients[0])
	b.probe, err = newProber(b.nodeNS)
	return b, err
}

func (b *bench) measureAll(sizes, only string, samples int) ([]row, error) {
	var rows []row
	for _, s := range strings.Split(sizes, ",") {
		size, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return rows, err
		}
		created, err := ensureServices(b.ctx, b.c, size, b.ips)
		if err != nil {
			return rows, err
		}
		fmt.Printf("==> %d Services present (created in %s)\n", size, created.Round(time.Second))
		settled := settle(b.l)
		fmt.Printf("==> control plane settled after %s (the first proxy measured must not share the CPUs with it)\n", settled.Round(time.Second))
		canary, err := b.c.CoreV1().Services(benchNS).Get(b.ctx, "svc-0", metav1.GetOptions{})
		if err != nil {
			return rows, err
		}
		vip := net.JoinHostPort(canary.Spec.ClusterIP, "80")
		for _, p := range proxies() {
			if !strings.Contains(","+only+",", ","+p.name+",") {
				continue
			}
			fmt.Printf("==> %s with %d Services\n", p.name, size)
			r := row{size: size, proxy: p.name, createdIn: created}
			if err := b.measure(&r, p, vip, samples); err != nil {
				return rows, err
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// measure runs proxy p on node-1 and fills r.
func (b *bench) measure(r *row, p proxyUnderTest, vip string, samples int) (err error) {
	if b.memoryOnly && p.name == "flatnet" {
		argv := p.argv
		p.argv = func(l lab.Layout, bin string) []string { return append(argv(l, bin), "--debug-pprof-addr="+pprofAddr) }
	}
	left, err := prepare(b.l, b.o.BinDir, p)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		fmt.Printf("    deleted what the previous proxy left on node-1: tables %v\n", left)
	}
	logPath := b.l.Path("logs", p.process+".log")
	logFrom := fileSize(logPath)
	start := time.Now()
	pid, err := launch(b.l, b.o.BinDir, p)
	if err != nil {
		return err
	}
	defer func() {
		if serr := stop(b.l, b.o.BinDir, p); err == nil {
			err = serr
		}
	}()
	if _, err := b.probe.waitWorking(b.ctx, vip, 10*time.Minute); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	r.startToWorking = time.Since(start)
	time.Sleep(3 * time.Second) // let the first syncs finish
	if v, ok := fullSyncSeconds(b.nodeNS, p); ok {
		r.fullSync = v
	}
	r.rssMiB = rss(pid)
	if b.memoryOnly {
		return b.measureMemory(r, p, pid)
	}
	lat, err := programmingLatency(b.ctx, b.c, b.probe, strings.ReplaceAll(p.name, "kube-proxy-", "kp"), b.ips, samples)
	if err != nil {
		r.programmingFailures = err
	}
	r.latP50, r.latP99 = pct(lat, .5), pct(lat, .99)
	r.forbidden = countLines(logPath, logFrom, "forbidden")
	b.measureTraffic(r, p, pid, vip)
	return nil
}

// measureTraffic warms up and, when every warm-up connection worked and
// the proxy was allowed everything it asked the API server for, measures
// connection rates.
func (b *bench) measureTraffic(r *row, p proxyUnderTest, pid int, vip string) {
	fmt.Printf("    node-1: %s\n    node-1's conntrack entries toward %s: %v\n", readSettings(b.nodeNS), vip, vipFlows(b.nodeNS, vip))
	r.warmNode, r.warmPod = warmUp(b.nodeNS, vip), warmUp(b.podNS, vip)
	fmt.Printf("    warm-up through %s, one connection from every source port: from node-1 %s; from a pod %s\n", vip, r.warmNode, r.warmPod)
	fmt.Printf("    %s's log: %d lines with \"forbidden\"\n", p.process, r.forbidden)
	if !r.measured() {
		fmt.Printf("    %s: no connection rates measured\n", p.name)
		return
	}
	cpu0, t0 := cpuSeconds(pid), time.Now()
	r.viaVIP, r.direct, r.vsDirect = b.runs.compare("node-1", b.nodeNS, b.serverNS, vip, b.direct)
	r.podVIP, r.podDirect, r.podVsDirect = b.runs.compare("a pod on node-1", b.podNS, b.serverNS, vip, b.direct)
	fmt.Printf("    the proxy used %.1f%% of a core during the connection-rate runs\n",
		100*(cpuSeconds(pid)-cpu0)/time.Since(t0).Seconds())
	fmt.Printf("    start->working %s, full sync %.2fs, RSS %.0f MiB, latency p50 %s p99 %s, %0.f conn/s via VIP, %0.f direct\n",
		r.startToWorking.Round(time.Millisecond), r.fullSync, r.rssMiB, r.latP50.Round(time.Millisecond), r.latP99.Round(time.Millisecond),
		r.viaVIP.perSec, r.direct.perSec)
}

// fileSize is the size of the file at path, 0 when there is none.
func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// countLines counts the lines of the file at path from offset on that
// contain s.
func countLines(path string, offset int64, s string) int {
	b, err := os.ReadFile(path)
	if err != nil || offset > int64(len(b)) {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(b[offset:]), "\n") {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// fullSyncSeconds is the duration of the proxy's first full sync, from its
// own metrics: flatnetd's last-full-sync gauge, kube-proxy's full-sync
// histogram (nftables) or its sync histogram (iptables: every sync is
// full), averaged over the syncs so far.
func fullSyncSeconds(nodeNS string, p proxyUnderTest) (float64, bool) {
	if p.name == "flatnet" {
		return metric(nodeNS, p.metrics, "flatnet_proxy_last_full_sync_seconds")
	}
	sum, ok1 := metric(nodeNS, p.metrics, p.fullSync+"_sum")
	n, ok2 := metric(nodeNS, p.metrics, p.fullSync+"_count")
	if !ok1 || !ok2 || n == 0 {
		return 0, false
	}
	return sum / n, true
}
