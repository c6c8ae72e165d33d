// Command service benchmarks the service proxy against upstream kube-proxy
// v1.37.2 in nftables and iptables mode, on a 2-node lab: the same API
// server and the same Services, one proxy at a time on node-1 (the previous
// one stopped and its rules removed first). Backends are two netexec pods on
// node-2; every benchmark Service points at them, so every Service works.
//
// Per size (number of Services present) and proxy it reports: time from the
// proxy's start to a working ClusterIP; the proxy's own full-sync duration
// where it exports one; its RSS; network programming latency (create a
// Service -> first connection through its ClusterIP from node-1, p50/p99);
// the rate of new TCP connections through a ClusterIP and straight to the
// pod, from node-1 itself (DNAT and masquerade, as upstream) and from a pod
// on node-1 (DNAT only): 2 workers, RST close, 24 pairs of 0.5 s rounds,
// one each way, the median round and the median ratio of the pairs
// reported (see connRates and connector); and the proxy's CPU use
// meanwhile.
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
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	viaVIP, direct        rate    // client: node-1 itself (DNAT and masquerade, as upstream)
	podVIP, podDirect     rate    // client: a pod on node-1 (DNAT only)
	vsDirect, podVsDirect float64 // via ClusterIP / straight to the pods, median of paired rounds
	createdIn             time.Duration
	programmingFailures   error
}

func main() {
	nsexec.MaybeRun() // the lab starts its processes by re-executing this binary
	os.Exit(run())
}

func run() int {
	sizes := flag.String("services", "1000,10000", "numbers of Services present, comma-separated")
	only := flag.String("proxies", "flatnet,kube-proxy-nftables,kube-proxy-iptables", "proxies to measure")
	samples := flag.Int("samples", 30, "programming-latency samples per proxy and size")
	keep := flag.Bool("keep", false, "leave the lab up afterwards")
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
	o := lab.Options{Name: "bench", Nodes: 2, StateRoot: lab.DefaultStateRoot, BinDir: bin, SourceDir: root, NoProxy: true, Out: os.Stdout}
	if !*keep {
		defer func() { _ = lab.Down(o.StateRoot, o.Name, os.Stdout) }()
	}
	if err := lab.Up(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rows, err := measureAll(ctx, o, *sizes, *only, *samples)
	report(rows)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func measureAll(ctx context.Context, o lab.Options, sizes, only string, samples int) ([]row, error) {
	l, _, err := lab.Open(o.StateRoot, o.Name)
	if err != nil {
		return nil, err
	}
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	pods, err := backends(ctx, c)
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, p := range pods {
		ips = append(ips, p.Status.PodIP)
	}
	clients, err := pinnedPods(ctx, c, "client", "node-1", 1)
	if err != nil {
		return nil, err
	}
	clientNS := l.PodNetNS(&clients[0])
	var direct []string // the pods behind every benchmark Service
	for _, ip := range ips {
		direct = append(direct, net.JoinHostPort(ip, "8080"))
	}
	nodeNS, serverNS := netns.Path(l.NS("node-1")), netns.Path(l.NS("node-2"))
	var rows []row
	for _, s := range strings.Split(sizes, ",") {
		size, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return rows, err
		}
		created, err := ensureServices(ctx, c, size, ips)
		if err != nil {
			return rows, err
		}
		fmt.Printf("==> %d Services present (created in %s)\n", size, created.Round(time.Second))
		settled := settle(l)
		fmt.Printf("==> control plane settled after %s (the first proxy measured must not share the CPUs with it)\n", settled.Round(time.Second))
		canary, err := c.CoreV1().Services(benchNS).Get(ctx, "svc-0", metav1.GetOptions{})
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
			start := time.Now()
			pid, err := startOn(l, o.BinDir, p)
			if err != nil {
				return rows, err
			}
			if _, err := waitWorking(ctx, nodeNS, vip, 10*time.Minute); err != nil {
				_ = stop(l, o.BinDir, p)
				return rows, fmt.Errorf("%s: %w", p.name, err)
			}
			r.startToWorking = time.Since(start)
			time.Sleep(3 * time.Second) // let the first syncs finish
			if v, ok := fullSyncSeconds(nodeNS, p); ok {
				r.fullSync = v
			}
			r.rssMiB = rss(pid)
			lat, err := programmingLatency(ctx, c, nodeNS, strings.ReplaceAll(p.name, "kube-proxy-", "kp"), ips, samples)
			if err != nil {
				r.programmingFailures = err
			}
			r.latP50, r.latP99 = pct(lat, .5), pct(lat, .99)
			cpu0, t0 := cpuSeconds(pid), time.Now()
			r.viaVIP, r.direct, r.vsDirect = connRates("node-1", nodeNS, serverNS, vip, direct)
			r.podVIP, r.podDirect, r.podVsDirect = connRates("a pod on node-1", clientNS, serverNS, vip, direct)
			fmt.Printf("    the proxy used %.1f%% of a core during the connection-rate runs\n",
				100*(cpuSeconds(pid)-cpu0)/time.Since(t0).Seconds())
			if err := stop(l, o.BinDir, p); err != nil {
				return rows, err
			}
			rows = append(rows, r)
			fmt.Printf("    start->working %s, full sync %.2fs, RSS %.0f MiB, latency p50 %s p99 %s, %0.f conn/s via VIP, %0.f direct\n",
				r.startToWorking.Round(time.Millisecond), r.fullSync, r.rssMiB, r.latP50.Round(time.Millisecond), r.latP99.Round(time.Millisecond),
				r.viaVIP.perSec, r.direct.perSec)
		}
	}
	return rows, nil
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

func report(rows []row) {
	if len(rows) == 0 {
		return
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "services\tproxy\tstart->working\tfull sync\tRSS MiB\tprog. latency p50\tp99\tconn/s via ClusterIP\tp50\tfailed\tconn/s to pod\tp50\tfrom a pod: via ClusterIP\tfailed\tto pod\t")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
	us := func(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
	for _, r := range rows {
		full := "-"
		if r.fullSync > 0 {
			full = fmt.Sprintf("%.2f s", r.fullSync)
		}
		lat99 := ms(r.latP99)
		if r.programmingFailures != nil {
			lat99 += " (" + r.programmingFailures.Error() + ")"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%.0f\t%s\t%s\t%.0f\t%s\t%d\t%.0f\t%s\t%.0f\t%d\t%.0f\t\n", r.size, r.proxy, ms(r.startToWorking), full, r.rssMiB,
			ms(r.latP50), lat99, r.viaVIP.perSec, us(r.viaVIP.p50), r.viaVIP.failures, r.direct.perSec, us(r.direct.p50),
			r.podVIP.perSec, r.podVIP.failures, r.podDirect.perSec)
	}
	_ = w.Flush()
	for _, size := range []int{rows[0].size, rows[len(rows)-1].size} {
		var ours, nft *row
		for i := range rows {
			if rows[i].size == size && rows[i].proxy == "flatnet" {
				ours = &rows[i]
			}
			if rows[i].size == size && rows[i].proxy == "kube-proxy-nftables" {
				nft = &rows[i]
			}
		}
		if ours != nil && nft != nil && nft.latP99 > 0 {
			fmt.Printf("%d Services: programming latency p99 flatnet/kube-proxy-nftables = %.2f; RSS ratio %.2f\n",
				size, float64(ours.latP99)/float64(nft.latP99), ours.rssMiB/nft.rssMiB)
		}
		if size == rows[len(rows)-1].size {
			break
		}
	}
	first := map[string]*row{} // each proxy's row at the smallest size
	for i := range rows {
		r := &rows[i]
		if first[r.proxy] == nil {
			first[r.proxy] = r
		}
		ratio := func(a, b float64) float64 {
			if b == 0 {
				return 0
			}
			return a / b
		}
		fmt.Printf("%d Services, %s: via ClusterIP / to pod (paired rounds) = %.2f from node-1, %.2f from a pod; via ClusterIP vs %d Services = %.2f from node-1, %.2f from a pod\n",
			r.size, r.proxy, r.vsDirect, r.podVsDirect,
			first[r.proxy].size, ratio(r.viaVIP.perSec, first[r.proxy].viaVIP.perSec), ratio(r.podVIP.perSec, first[r.proxy].podVIP.perSec))
	}
}
