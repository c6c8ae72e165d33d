package agent

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serve starts /healthz, /readyz, /metrics and, when asked, /debug/pprof/.
func (a *Agent) serve() (func(), error) {
	var stops []func()
	start := func(addr string, h http.Handler) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		stops = append(stops, func() { _ = srv.Close() })
		a.log.Info("serving", "addr", ln.Addr().String())
		return nil
	}
	stopAll := func() {
		for _, s := range stops {
			s()
		}
	}
	if err := start(a.o.HealthAddr, a.healthHandler()); err != nil {
		return stopAll, err
	}
	a.metrics.register(a.registry)
	if err := start(a.o.MetricsAddr, promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{})); err != nil {
		return stopAll, err
	}
	return stopAll, start(a.o.PprofAddr, pprofHandler())
}

// pprofHandler serves Go's profiles (net/http/pprof) under /debug/pprof/.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// live says why the agent should be restarted, or nil. As kube-proxy's
// healthz: a sync loop that stopped trying, or a Service (or policy)
// change that has waited longer than --health-timeout for a successful
// sync. A node
// sync that fails (and keeps retrying) is not a reason: restarting would
// not fix a refused route, and each restart would cost a full sync.
func (a *Agent) live(now time.Time) error {
	if a.runner != nil {
		if s := a.runner.Status(); !s.LastAttempt.IsZero() && now.Sub(s.LastAttempt) > a.o.HealthTimeout {
			return fmt.Errorf("node sync: no attempt for %s", now.Sub(s.LastAttempt).Round(time.Second))
		}
	}
	for _, p := range a.proxiers {
		if err := p.Status().Stalled(now, a.o.HealthTimeout); err != nil {
			return fmt.Errorf("service proxy: %w", err)
		}
	}
	for _, e := range a.egress {
		if err := e.Status().Stalled(now, a.o.HealthTimeout); err != nil {
			return fmt.Errorf("egress: %w", err)
		}
	}
	for _, e := range a.policies {
		if err := e.Status().Stalled(now, a.o.HealthTimeout); err != nil {
			return fmt.Errorf("network policy: %w", err)
		}
	}
	if a.guard != nil {
		if err := a.guard.Status().Stalled(now, a.o.HealthTimeout); err != nil {
			return fmt.Errorf("anti-spoofing: %w", err)
		}
	}
	return nil
}

// ready says why the node cannot take pods and Service traffic yet, or nil.
func (a *Agent) ready() error {
	if !a.installed.Load() {
		return fmt.Errorf("CNI configuration not installed yet (no pod CIDR)")
	}
	for _, p := range a.proxiers {
		if p.Status().LastSuccess.IsZero() {
			return fmt.Errorf("service proxy has not synced yet")
		}
	}
	for _, e := range a.policies {
		if !e.Synced() {
			return fmt.Errorf("network policy has not synced yet")
		}
	}
	return nil
}

func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	check := func(f func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := f(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
			if p := a.lastErr.Load(); p != nil {
				fmt.Fprintf(w, "last node sync failed (retrying): %v\n", *p)
			}
		}
	}
	mux.HandleFunc("/healthz", check(func() error { return a.live(time.Now()) }))
	mux.HandleFunc("/readyz", check(a.ready))
	mux.HandleFunc("/policy/log", a.servePolicyLog)
	return mux
}
