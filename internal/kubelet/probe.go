package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet-io/flatnet/internal/nsexec"
)

// probe runs the readiness and liveness probes that are due, each in its own
// goroutine so that a slow probe does not hold the pod's loop.
func (w *podWorker) probe(ctx context.Context) {
	for _, c := range w.containers {
		if !c.isRunning() {
			continue
		}
		c.mu.Lock()
		now := time.Now()
		started := c.started.Time
		busy := c.probeInProgress
		readiness, liveness := c.spec.ReadinessProbe, c.spec.LivenessProbe
		if readiness == nil {
			c.ready = true
		}
		runReady := readiness != nil && !busy && now.After(c.nextProbe) && now.Sub(started) >= delay(readiness)
		runLive := liveness != nil && !busy && now.After(c.nextLiveness) && now.Sub(started) >= delay(liveness)
		if runReady || runLive {
			c.probeInProgress = true
		}
		c.mu.Unlock()
		if !runReady && !runLive {
			continue
		}
		go func() {
			var readyErr, liveErr error
			if runReady {
				readyErr = w.runProbe(ctx, c, readiness)
			}
			if runLive {
				liveErr = w.runProbe(ctx, c, liveness)
			}
			c.mu.Lock()
			c.probeInProgress = false
			if runReady {
				c.nextProbe = time.Now().Add(period(readiness))
				c.recordReadiness(readiness, readyErr)
			}
			restart := false
			if runLive {
				c.nextLiveness = time.Now().Add(period(liveness))
				if liveErr == nil {
					c.livenessFails = 0
				} else if c.livenessFails++; c.livenessFails >= int(threshold(liveness.FailureThreshold, 3)) {
					restart, c.livenessFails = true, 0
				}
			}
			c.mu.Unlock()
			if restart {
				w.k.log.Info("liveness probe failed; restarting container", "pod", w.ns+"/"+w.name, "container", c.spec.Name, "err", liveErr)
				c.signal(true)
			}
			w.notify()
		}()
	}
}

func (c *container) recordReadiness(p *corev1.Probe, err error) {
	if err == nil {
		c.probeFailures = 0
		if c.probeSuccesses++; c.probeSuccesses >= int(threshold(p.SuccessThreshold, 1)) {
			c.ready = true
		}
		return
	}
	c.probeSuccesses = 0
	if c.probeFailures++; c.probeFailures >= int(threshold(p.FailureThreshold, 3)) {
		c.ready = false
	}
}

func delay(p *corev1.Probe) time.Duration { return time.Duration(p.InitialDelaySeconds) * time.Second }

func period(p *corev1.Probe) time.Duration {
	return time.Duration(threshold(p.PeriodSeconds, 10)) * time.Second
}

func threshold(v, def int32) int32 {
	if v <= 0 {
		return def
	}
	return v
}

// runProbe performs one probe of container c.
func (w *podWorker) runProbe(ctx context.Context, c *container, p *corev1.Probe) error {
	timeout := time.Duration(threshold(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host := w.sandbox.ips[0]
	switch {
	case p.HTTPGet != nil:
		if p.HTTPGet.Host != "" {
			host = p.HTTPGet.Host
		}
		port, err := resolvePort(p.HTTPGet.Port, c.spec)
		if err != nil {
			return err
		}
		scheme := "http"
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), p.HTTPGet.Path), nil)
		if err != nil {
			return err
		}
		for _, h := range p.HTTPGet.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe: status %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		if p.TCPSocket.Host != "" {
			host = p.TCPSocket.Host
		}
		port, err := resolvePort(p.TCPSocket.Port, c.spec)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil && len(p.Exec.Command) > 0:
		var cmd *exec.Cmd
		if w.sandbox.nsPath == "" {
			cmd = exec.CommandContext(ctx, p.Exec.Command[0], p.Exec.Command[1:]...)
		} else {
			cmd = nsexec.CommandContext(ctx, w.sandbox.nsPath, p.Exec.Command[0], p.Exec.Command[1:]...)
		}
		cmd.Env = w.env(c)
		return cmd.Run()
	}
	return fmt.Errorf("probe of container %s has no handler the lab supports", c.spec.Name)
}

// resolvePort turns a numeric or named port into a number.
func resolvePort(p intstr.IntOrString, c corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}
