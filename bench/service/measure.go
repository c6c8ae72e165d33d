package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// prober sends the benchmark's probes (is this ClusterIP working yet?) from
// node-1, each from a source port of its own, below the range the kernel
// picks connecting ports from. A probe sent before the rules exist leaves a
// conntrack entry that was never NATed (SYN_SENT, 120 s); a later
// connection from the same port matches that entry, skips DNAT and fails
// (kube-proxy nftables rejects it as a packet to an unknown port of a
// ClusterIP, iptables mode sends it un-NATed to the default gateway). When
// the probes shared the connection-rate runs' ports, kube-proxy failed
// hundreds of those runs' connects. Probes start at least 10 ms apart, so
// a port comes round again after 160 s, when its entry is gone.
type prober struct {
	nsPath string
	lo, n  int // ports lo .. lo+n-1
	next   int
	last   time.Time
}

func newProber(nsPath string) (*prober, error) {
	low, _, err := portRange(nsPath)
	if err != nil {
		return nil, err
	}
	const n = 16384
	if low-n < 1024 {
		return nil, fmt.Errorf("node-1's local port range starts at %d: no room for %d probe ports below it", low, n)
	}
	return &prober{nsPath: nsPath, lo: low - n, n: n}, nil
}

// connect opens and resets one TCP connection to addr.
func (p *prober) connect(addr string, timeout time.Duration) error {
	time.Sleep(time.Until(p.last.Add(10 * time.Millisecond)))
	p.last = time.Now()
	port := p.lo + p.next
	p.next = (p.next + 1) % p.n
	var c net.Conn
	err := netns.Do(p.nsPath, func() (err error) {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: port}}
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close with RST: no TIME_WAIT
	}
	return c.Close()
}

// waitWorking probes addr until a connection succeeds; it returns how long
// that took.
func (p *prober) waitWorking(ctx context.Context, addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		if err := p.connect(addr, 10*time.Millisecond); err == nil {
			return time.Since(start), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	return 0, fmt.Errorf("%s not working after %s", addr, timeout)
}

// programmingLatency creates new Services one at a time and measures how
// long each takes from the create call to a working connection through its
// ClusterIP from node-1: Service change -> rule live in the kernel, seen by
// real traffic.
func programmingLatency(ctx context.Context, c kubernetes.Interface, p *prober, tag string, ips []string, samples int) ([]time.Duration, error) {
	var out []time.Duration
	for i := range samples {
		name := fmt.Sprintf("lat-%s-%d", tag, i)
		start := time.Now()
		svc, err := createService(ctx, c, name, ips)
		if err != nil {
			return nil, err
		}
		if _, err := p.waitWorking(ctx, net.JoinHostPort(svc.Spec.ClusterIP, "80"), 2*time.Minute); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, time.Since(start))
		_ = c.CoreV1().Services(benchNS).Delete(ctx, name, metav1.DeleteOptions{})
		_ = c.DiscoveryV1().EndpointSlices(benchNS).Delete(ctx, name+"-x", metav1.DeleteOptions{})
		time.Sleep(200 * time.Millisecond)
	}
	return out, nil
}

// rate is the result of a connection-rate run.
type rate struct {
	perSec   float64
	p50      time.Duration
	failures int
	errs     map[string]int  // failures by kind
	lat      []time.Duration // each successful connect
}

// connRate opens new TCP connections from nsPath with workers workers for
// d, each to one of addrs picked at random and closed with RST, and reports
// the rate. Worker i runs on CPU i (modulo the CPUs there are), so the
// scheduler neither moves a worker between CPUs mid-round nor puts both on
// one while the other idles.
func connRate(nsPath string, addrs []string, workers int, d time.Duration) rate {
	var mu sync.Mutex
	var lat []time.Duration
	failures := 0
	errs := map[string]int{}
	var conns []*connector
	for _, addr := range addrs {
		c, err := newConnector(addr, time.Second)
		if err != nil {
			return rate{failures: 1, errs: map[string]int{err.Error(): 1}}
		}
		conns = append(conns, c)
	}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		err := inNamespace(nsPath, func() {
			defer wg.Done()
			pin(w)
			var mine []time.Duration
			bad := map[string]int{}
			for time.Now().Before(deadline) {
				start := time.Now()
				if err := conns[rand.IntN(len(conns))].once(); err != nil {
					bad[errKind(err)]++
				} else {
					mine = append(mine, time.Since(start))
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			for k, v := range bad {
				errs[k] += v
				failures += v
			}
			mu.Unlock()
		})
		if err != nil {
			wg.Done()
			errs[err.Error()]++
			failures++
		}
	}
	wg.Wait()
	r := rate{perSec: float64(len(lat)) / d.Seconds(), failures: failures, errs: errs, lat: lat}
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p50 = lat[len(lat)/2]
	}
	return r
}

// pin binds the calling thread (locked to its goroutine) to CPU i modulo
// the CPUs this process may use; it leaves the thread alone if that fails.
func pin(i int) {
	var allowed unix.CPUSet
	if unix.SchedGetaffinity(0, &allowed) != nil || allowed.Count() == 0 {
		return
	}
	var cpus []int
	for c := 0; len(cpus) < allowed.Count(); c++ {
		if allowed.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	var one unix.CPUSet
	one.Set(cpus[i%len(cpus)])
	_ = unix.SchedSetaffinity(0, &one)
}

// rateRuns is how connection rates are compared: pairs pairs of rounds of
// round each, one round through the ClusterIP and one straight to the
// pods, back to back, the order alternating from pair to pair, workers
// workers.
type rateRuns struct {
	pairs, workers int
	round          time.Duration
}

// ratio is the median over the pairs of their ratio (via ClusterIP / to the
// pods) and a 95 % confidence interval for it.
type ratio struct {
	median, lo, hi float64
	n              int
}

func (r ratio) String() string {
	if r.n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f (95%% CI %.3f-%.3f, %d pairs)", r.median, r.lo, r.hi, r.n)
}

// compare measures new connections from clientNS through vip and straight
// to the pods behind it (direct: each connection to one of them at random,
// as the Service spreads them; a single pod serves a tight loop of
// connections faster than two do, so one pod is not the limit for a
// Service of two). It reports each way's median round and the median over
// the pairs of their ratio: this VM's speed drifts by a third from one
// second to the next, which the ratio of two rounds a fraction of a second
// apart mostly cancels. It prints the failures by kind and the kernel
// counters that grew on the client's and the server's side.
func (rr rateRuns) compare(client, clientNS, serverNS, vip string, direct []string) (viaVIP, toPod rate, rt ratio) {
	var rounds [2][]rate
	grew := [2][2]kernelCounters{{{}, {}}, {{}, {}}} // [vip|direct][client|server]: summed over the rounds
	addrs := [2][]string{{vip}, direct}
	var ratios []float64
	for p := range rr.pairs {
		for k := range 2 {
			i := (p + k) % 2
			c0, s0 := readCounters(clientNS), readCounters(serverNS)
			rounds[i] = append(rounds[i], connRate(clientNS, addrs[i], rr.workers, rr.round))
			grew[i][0].add(readCounters(clientNS), c0)
			grew[i][1].add(readCounters(serverNS), s0)
		}
		if d := rounds[1][p].perSec; d > 0 {
			ratios = append(ratios, rounds[0][p].perSec/d)
		}
	}
	out := [2]rate{}
	for i, what := range []string{"via ClusterIP", "to the pod"} {
		out[i] = mergeRates(rounds[i])
		fmt.Printf("    conn/s from %s %s %.0f (median round; quartiles %s), failed %d %v\n      client side: %s\n      server node: %s\n",
			client, what, out[i].perSec, quartiles(perSec(rounds[i])), out[i].failures, out[i].errs,
			grew[i][0].delta(kernelCounters{}), grew[i][1].delta(kernelCounters{}))
	}
	rt.median, rt.n = median(ratios), len(ratios)
	rt.lo, rt.hi = medianCI(ratios)
	fmt.Printf("    via ClusterIP / to the pod, median of the pairs' ratios: %s (quartiles %s)\n", rt, quartiles(ratios))
	return out[0], out[1], rt
}

// medianCI is a distribution-free 95 % confidence interval for the median
// of the population xs is a sample of: the order statistics x(k) and
// x(n+1-k), k the largest with P(Binomial(n, 1/2) < k) <= 2.5 %. It
// assumes only that the pairs are independent draws of one distribution
// (the drift a pair does not cancel is part of that distribution). Its
// half-width is about 1.8 interquartile ranges / sqrt(n); fewer than 6
// pairs give no interval (0, 0).
func medianCI(xs []float64) (lo, hi float64) {
	n := len(xs)
	s := slices.Sorted(slices.Values(xs))
	k, cdf := 0, 0.0 // cdf = P(X <= k-1)
	for j := 0; j < n/2; j++ {
		cdf += binomialHalf(n, j)
		if cdf > 0.025 {
			break
		}
		k = j + 1
	}
	if k == 0 {
		return 0, 0
	}
	return s[k-1], s[n-k]
}

// binomialHalf is P(X = j) for X ~ Binomial(n, 1/2).
func binomialHalf(n, j int) float64 {
	lg := func(x int) float64 { v, _ := math.Lgamma(float64(x) + 1); return v }
	return math.Exp(lg(n) - lg(j) - lg(n-j) - float64(n)*math.Ln2)
}

func perSec(rs []rate) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = r.perSec
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n > 0 {
		return (s[(n-1)/2] + s[n/2]) / 2
	}
	return 0
}

func quartiles(xs []float64) string {
	s := slices.Sorted(slices.Values(xs))
	if len(s) == 0 {
		return "-"
	}
	f := "%.0f"
	if s[len(s)-1] < 10 {
		f = "%.3f"
	}
	return fmt.Sprintf(f+" "+f, s[len(s)/4], s[len(s)*3/4])
}

// mergeRates merges rounds of equal length: the median round's rate (a
// round that shared the CPUs with something else does not move it), the
// failures and latencies of all.
func mergeRates(rs []rate) rate {
	m := rate{perSec: median(perSec(rs)), errs: map[string]int{}}
	for _, r := range rs {
		m.failures += r.failures
		m.lat = append(m.lat, r.lat...)
		for k, v := range r.errs {
			m.errs[k] += v
		}
	}
	if len(m.lat) > 0 {
		slices.Sort(m.lat)
		m.p50 = m.lat[len(m.lat)/2]
	}
	return m
}

// errKind names a dial failure by its cause.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, syscall.EINPROGRESS), errors.Is(err, syscall.EAGAIN):
		return "timeout" // a blocking connect past SO_SNDTIMEO ends with EINPROGRESS
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no-source-port"
	}
	return err.Error()
}

// metric reads one sample (the first line starting with name) from a
// Prometheus endpoint inside nsPath.
func metric(nsPath, addr, name string) (float64, bool) {
	body, err := probe.HTTPGet(nsPath, addr, "/metrics")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1)+0.5)]
}
