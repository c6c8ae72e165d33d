// Package agent is flatnetd, the node agent. In this first slice it installs
// the node's CNI conflist from statically given pod CIDRs and serves
// /healthz; reading the CIDRs from the Node object, routes to other nodes and
// the service proxy come next (see the issues).
//
// State it leaves on the node: one file, <cni-conf-dir>/<cni-conf-name>,
// replaced atomically whenever its content would change. Until it exists the
// runtime has no network for pods, which is the intended "not ready" state.
package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flatnet-io/flatnet/internal/cniconf"
)

// Options are flatnetd's flags.
type Options struct {
	PodCIDRs    []netip.Prefix
	CNIConfDir  string
	CNIConfName string
	HealthAddr  string
	Conf        cniconf.Options
}

// Defaults returns the options a node uses unless told otherwise.
func Defaults() *Options {
	return &Options{CNIConfDir: "/etc/cni/net.d", CNIConfName: "10-flatnet.conflist", HealthAddr: "127.0.0.1:9465"}
}

type prefixList struct{ out *[]netip.Prefix }

func (p prefixList) String() string {
	if p.out == nil {
		return ""
	}
	var s []string
	for _, c := range *p.out {
		s = append(s, c.String())
	}
	return strings.Join(s, ",")
}

func (p prefixList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		c, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("pod CIDR %q: %w", part, err)
		}
		*p.out = append(*p.out, c.Masked())
	}
	return nil
}

// AddFlags registers the options on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.Var(prefixList{&o.PodCIDRs}, "pod-cidr", "this node's pod CIDR(s), comma-separated (one per family)")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "directory the container runtime reads CNI configuration from")
	fs.StringVar(&o.CNIConfName, "cni-conf-name", o.CNIConfName, "file name of the conflist to install")
	fs.StringVar(&o.HealthAddr, "health-addr", o.HealthAddr, "address of the /healthz endpoint (empty: off)")
	fs.StringVar(&o.Conf.Bridge, "bridge", "", "node bridge name (default flatnet0)")
	fs.IntVar(&o.Conf.MTU, "mtu", 0, "pod MTU (default: the node's uplink MTU)")
	fs.BoolVar(&o.Conf.Portmap, "portmap", false, "chain the portmap plugin for hostPort support")
}

// Validate reports every problem with the options at once.
func (o *Options) Validate() error {
	var errs []error
	if len(o.PodCIDRs) == 0 {
		errs = append(errs, errors.New("--pod-cidr is required"))
	}
	if o.CNIConfDir == "" || o.CNIConfName == "" {
		errs = append(errs, errors.New("--cni-conf-dir and --cni-conf-name must not be empty"))
	}
	return errors.Join(errs...)
}

// Run installs the conflist and serves health until ctx ends.
func Run(ctx context.Context, o *Options, log *slog.Logger) error {
	var healthy atomic.Bool
	if o.HealthAddr != "" {
		ln, err := net.Listen("tcp", o.HealthAddr)
		if err != nil {
			return fmt.Errorf("health endpoint: %w", err)
		}
		srv := &http.Server{Handler: healthHandler(&healthy), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("serving health", "addr", ln.Addr().String())
	}
	o.Conf.PodCIDRs = o.PodCIDRs
	data, err := cniconf.Render(o.Conf)
	if err != nil {
		return err
	}
	changed, err := cniconf.Install(o.CNIConfDir, o.CNIConfName, data)
	if err != nil {
		return err
	}
	log.Info("CNI configuration installed", "dir", o.CNIConfDir, "file", o.CNIConfName, "changed", changed, "podCIDRs", prefixList{&o.PodCIDRs}.String())
	healthy.Store(true)
	<-ctx.Done()
	return nil
}

func healthHandler(healthy *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !healthy.Load() {
			http.Error(w, "CNI configuration not installed yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
