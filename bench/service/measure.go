package main

import (
	"context"
	"errors"
	"fmt"
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
	errs     map[string]int // failures by kind
}

// connRate opens new TCP connections to addr from nsPath with workers
// workers for d, each closed with RST, and reports the rate.
func connRate(nsPath, addr string, workers int, d time.Duration) rate {
	var mu sync.Mutex
	var lat []time.Duration
	failures := 0
	errs := map[string]int{}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				start := time.Now()
				err := connectOnce(nsPath, addr, time.Second)
				mu.Lock()
				if err != nil {
					failures++
					errs[errKind(err)]++
				} else {
					lat = append(lat, time.Since(start))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r := rate{perSec: float64(len(lat)) / d.Seconds(), failures: failures, errs: errs}
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p50 = lat[len(lat)/2]
	}
	return r
}

// connRateExplained runs connRate from clientNS (2 workers, 3 s) and prints
// the failures by kind and the kernel counters that grew meanwhile on the
// client's and the server's node.
func connRateExplained(what, clientNS, serverNS, addr string) rate {
	c0, s0 := readCounters(clientNS), readCounters(serverNS)
	r := connRate(clientNS, addr, 2, 3*time.Second)
	fmt.Printf("    conn/s %s %.0f, failed %d %v\n      client node: %s\n      server node: %s\n",
		what, r.perSec, r.failures, r.errs, readCounters(clientNS).delta(c0), readCounters(serverNS).delta(s0))
	return r
}

// errKind names a dial failure by its cause.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
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
