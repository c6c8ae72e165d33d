package agent

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/flatnet-io/flatnet/internal/admit"
	"github.com/flatnet-io/flatnet/internal/cniconf"
)

// Options are flatnetd's flags.
type Options struct {
	Kubeconfig    string // "" = in-cluster configuration
	NodeName      string
	ClusterCIDRs  []netip.Prefix // one per IP family: two on a dual-stack cluster
	PodCIDRs      []netip.Prefix // static pod CIDRs: no API server needed
	CNIConfDir    string
	CNIConfName   string
	HealthAddr    string
	MetricsAddr   string
	PprofAddr     string // Go's /debug/pprof/, for memory and CPU profiles; "" = off
	Resync        time.Duration
	HealthTimeout time.Duration // /healthz fails when a sync loop makes no progress for this long
	Proxy         bool          // run the service proxy
	Policy        bool          // enforce NetworkPolicy
	PolicySocket  string        // where the CNI plugin asks to admit a new pod ("" = no admission)
	PolicyRevoke  bool          // cut established connections a policy change denies
	MasqueradeAll bool
	Conf          cniconf.Options
}

// Defaults returns the options a node uses unless told otherwise.
func Defaults() *Options {
	return &Options{CNIConfDir: "/etc/cni/net.d", CNIConfName: "10-flatnet.conflist",
		HealthAddr: "127.0.0.1:9465", MetricsAddr: "127.0.0.1:9466", Resync: 30 * time.Second, HealthTimeout: 2 * time.Minute, Proxy: true, Policy: true,
		PolicySocket: admit.DefaultSocket, PolicyRevoke: true}
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
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "kubeconfig of the API server (empty: in-cluster)")
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "this node's name (the Node object)")
	fs.Var(prefixList{&o.ClusterCIDRs}, "cluster-cidr", "the cluster's pod CIDR, or one per family comma-separated (dual-stack): pod traffic leaving it is masqueraded")
	fs.Var(prefixList{&o.PodCIDRs}, "pod-cidr", "static pod CIDR(s) of this node, comma-separated; without an API server")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "directory the container runtime reads CNI configuration from")
	fs.StringVar(&o.CNIConfName, "cni-conf-name", o.CNIConfName, "file name of the conflist to install")
	fs.StringVar(&o.Conf.DataDir, "ipam-data-dir", "", "IPAM store directory written into the conflist (default: the plugin's)")
	fs.StringVar(&o.HealthAddr, "health-addr", o.HealthAddr, "address of /healthz (empty: off)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", o.MetricsAddr, "address of /metrics, unauthenticated: keep it on loopback or behind a proxy that authenticates (empty: off)")
	fs.StringVar(&o.PprofAddr, "debug-pprof-addr", "", "address of Go's /debug/pprof/ (heap and CPU profiles), a loopback address only (empty: off)")
	fs.DurationVar(&o.Resync, "resync", o.Resync, "period of the full resync of routes and rules")
	fs.DurationVar(&o.HealthTimeout, "health-timeout", o.HealthTimeout, "/healthz fails when a Service change waits this long for a successful sync, or a sync loop stops")
	fs.BoolVar(&o.Proxy, "proxy", o.Proxy, "run the service proxy (replaces kube-proxy)")
	fs.BoolVar(&o.Policy, "policy", o.Policy, "enforce NetworkPolicy (nftables table flatnet-policy)")
	fs.StringVar(&o.PolicySocket, "policy-socket", o.PolicySocket, "unix socket (\"@name\": abstract, in the node's network namespace) on which flatnet-cni asks to admit a new pod into the policy tables before its ADD returns; written into the conflist (empty: no admission, pods are not isolated before their status reaches the API server)")
	fs.BoolVar(&o.PolicyRevoke, "policy-revoke", o.PolicyRevoke, "cut established connections (delete their conntrack entries) that a policy change denies")
	fs.BoolVar(&o.MasqueradeAll, "masquerade-all", false, "masquerade all traffic to Services")
	fs.StringVar(&o.Conf.Bridge, "bridge", "", "node bridge name (default flatnet0)")
	fs.IntVar(&o.Conf.MTU, "mtu", 0, "pod MTU (default: the node's uplink MTU)")
	fs.BoolVar(&o.Conf.Portmap, "portmap", false, "chain the portmap plugin for hostPort support")
}

// Static reports whether the agent runs without an API server.
func (o *Options) Static() bool { return len(o.PodCIDRs) > 0 }

// Validate reports every problem with the options at once.
func (o *Options) Validate() error {
	var errs []error
	if !o.Static() && o.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (or --pod-cidr for a static node)"))
	}
	if !o.Static() && len(o.ClusterCIDRs) == 0 {
		errs = append(errs, errors.New("--cluster-cidr is required to tell pod egress from cluster traffic"))
	}
	if len(o.ClusterCIDRs) > 2 || len(o.ClusterCIDRs) == 2 && o.ClusterCIDRs[0].Addr().Is6() == o.ClusterCIDRs[1].Addr().Is6() {
		errs = append(errs, errors.New("--cluster-cidr takes one CIDR per IP family"))
	}
	if o.CNIConfDir == "" || o.CNIConfName == "" {
		errs = append(errs, errors.New("--cni-conf-dir and --cni-conf-name must not be empty"))
	}
	if o.PprofAddr != "" && !loopback(o.PprofAddr) {
		errs = append(errs, errors.New("--debug-pprof-addr must be a loopback address (profiles are unauthenticated)"))
	}
	if o.Resync < time.Second {
		errs = append(errs, errors.New("--resync must be at least 1s"))
	}
	if o.HealthTimeout < time.Minute || o.HealthTimeout < 2*o.Resync {
		errs = append(errs, errors.New("--health-timeout must be at least 1m and twice --resync (retries back off up to 30s)"))
	}
	return errors.Join(errs...)
}

// loopback reports whether addr (host:port) is on a loopback address.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
