package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// warmup is the result of a warm-up sweep.
type warmup struct {
	tried, failed int
	inUse         int            // ports a socket of the node holds: not tried
	errs          map[string]int // failures by kind
	err           error          // the sweep could not run
}

// ok reports whether every warm-up connection worked.
func (w warmup) ok() bool { return w.err == nil && w.failed == 0 && w.tried > 0 }

func (w warmup) String() string {
	if w.err != nil {
		return w.err.Error()
	}
	s := fmt.Sprintf("%d of %d failed (%d ports in use skipped)", w.failed, w.tried, w.inUse)
	if w.failed > 0 {
		s += fmt.Sprintf(" %v", w.errs)
	}
	return s
}

// maxWarmupFailures ends a sweep early: a proxy that fails this many is
// not measured anyway, and each timeout costs a second.
const maxWarmupFailures = 50

// warmUp connects once through addr from every source port the client's
// kernel may pick for a connection (its ip_local_port_range; a port a
// socket of the client holds is skipped), one at a time, each closed with
// RST and given 1 s, as in the rate runs. A connection from a port whose
// tuple conntrack still holds from an earlier flow that was never NATed
// fails, so a sweep that works leaves the rate runs no such port. (A
// sample of 200 connections would miss most: the rate runs sweep the port
// range every few seconds, so one stale entry among 28,000 ports fails one
// of their connections every few seconds.) It stops after
// maxWarmupFailures failures.
func warmUp(clientNS, addr string) warmup {
	lo, hi, err := portRange(clientNS)
	if err != nil {
		return warmup{err: err}
	}
	c, err := newConnector(addr, time.Second)
	if err != nil {
		return warmup{err: err}
	}
	w := warmup{errs: map[string]int{}}
	done := make(chan struct{})
	err = inNamespace(clientNS, func() {
		defer close(done)
		for port := lo; port <= hi && w.failed < maxWarmupFailures; port++ {
			switch err := c.from(port); {
			case errors.Is(err, unix.EADDRINUSE):
				w.inUse++ // the kernel would not pick it either
			case err != nil:
				w.tried++
				w.failed++
				w.errs[errKind(err)]++
			default:
				w.tried++
			}
		}
	})
	if err != nil {
		return warmup{err: err}
	}
	<-done
	return w
}

// portRange is the namespace's net.ipv4.ip_local_port_range (it applies to
// IPv6 too).
func portRange(nsPath string) (int, int, error) {
	out, err := outputIn(nsPath, "sysctl", "-n", "net.ipv4.ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("ip_local_port_range %q", out)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || lo > hi {
		return 0, 0, fmt.Errorf("ip_local_port_range %q", out)
	}
	return lo, hi, nil
}
