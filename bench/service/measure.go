package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet-io/flatnet/internal/probe"
)

// connectOnce opens and resets one TCP connection from inside nsPath.
func connectOnce(nsPath, addr string, timeout time.Duration) error {
	c, err := probe.Dial(nsPath, "tcp", addr, timeout)
	if err != nil {
		return err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // close with RST: no TIME_WAIT, no tuple reuse trouble
	}
	return c.Close()
}

// waitWorking polls addr until a connection succeeds; it returns how long
// that took.
func waitWorking(ctx context.Context, nsPath, addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		if err := connectOnce(nsPath, addr, 10*time.Millisecond); err == nil {
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
func programmingLatency(ctx context.Context, c kubernetes.Interface, nodeNS, tag string, ips []string, samples int) ([]time.Duration, error) {
	var out []time.Duration
	for i := range samples {
		name := fmt.Sprintf("lat-%s-%d", tag, i)
		start := time.Now()
		svc, err := createService(ctx, c, name, ips)
		if err != nil {
			return nil, err
		}
		if _, err := waitWorking(ctx, nodeNS, net.JoinHostPort(svc.Spec.ClusterIP, "80"), 2*time.Minute); err != nil {
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
// the rate.
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
	for range workers {
		wg.Add(1)
		err := inNamespace(nsPath, func() {
			defer wg.Done()
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

// connRates measures new connections from clientNS through vip and straight
// to the pods behind it (direct: each connection to one of them at random,
// as the Service spreads them; a single pod serves a tight loop of
// connections faster than two do, so one pod is not the limit for a
// Service of two), 2 workers, in 24 pairs of rounds of 0.5 s, one round
// each way, the order alternating from pair to pair. It reports each way's
// median round and the median over the pairs of their ratio: this VM's
// speed drifts by a third from one second to the next, which the ratio of
// two rounds half a second apart mostly cancels. It prints the failures by
// kind and the kernel counters that grew on the client's and the server's
// side.
func connRates(client, clientNS, serverNS, vip string, direct []string) (viaVIP, toPod rate, ratio float64) {
	const pairs = 24
	var rounds [2][]rate
	grew := [2][2]kernelCounters{{{}, {}}, {{}, {}}} // [vip|direct][client|server]: summed over the rounds
	addrs := [2][]string{{vip}, direct}
	var ratios []float64
	for p := range pairs {
		for k := range 2 {
			i := (p + k) % 2
			c0, s0 := readCounters(clientNS), readCounters(serverNS)
			rounds[i] = append(rounds[i], connRate(clientNS, addrs[i], 2, 500*time.Millisecond))
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
	ratio = median(ratios)
	fmt.Printf("    via ClusterIP / to the pod, median of %d pairs: %.3f (quartiles %s)\n", len(ratios), ratio, quartiles(ratios))
	return out[0], out[1], ratio
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
