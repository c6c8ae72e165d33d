// Package agent is flatnetd, the node agent. It watches Nodes through the
// API server and keeps three things true on its node:
//
//   - the CNI conflist in --cni-conf-dir describes this node's pod CIDRs
//     (Node.spec.podCIDRs, from the controller manager's node IPAM); until
//     the node has them there is no conflist and the runtime cannot start
//     pods, the intended "not ready" state;
//   - IP forwarding on, and a route to every other node's pod CIDR via its
//     InternalIP (package routes);
//   - pod egress leaving the cluster is masqueraded (package egress);
//   - with --proxy (the default), Services are programmed into nftables by
//     the service proxy (package proxy), which replaces kube-proxy; bridged
//     IPv4 traffic is sent through the IP hooks
//     (net.bridge.bridge-nf-call-iptables=1 in the node's namespace) so that
//     replies from a backend on the same bridge are de-NATed.
//
// Design notes: informer events only poke a runner; each sync computes the
// whole desired state from the informer cache and applies it, level
// triggered, and a periodic resync repairs anything changed behind the
// agent's back. On exit nothing is flushed: routes, rules and the conflist
// stay as they are until a new agent replaces them, so a restart does not
// disturb established connections. With --pod-cidr the agent runs without an
// API server and only installs the conflist.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flatnet-io/flatnet/internal/cniconf"
	"github.com/flatnet-io/flatnet/internal/egress"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/proxy"
	"github.com/flatnet-io/flatnet/internal/routes"
)

// Agent is one node's flatnetd.
type Agent struct {
	o       *Options
	log     *slog.Logger
	nodes   corelisters.NodeLister
	handle  *netlink.Handle
	masqs   []*egress.Masquerader // one per cluster CIDR, in the same order
	metrics *metrics

	registry  *prometheus.Registry
	proxiers  []*proxy.Proxier // one per cluster CIDR family; none without --proxy
	proxyPoke chan struct{}

	installed atomic.Bool // the conflist is in place
	lastErr   atomic.Pointer[error]
	trigger   chan struct{}
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, o *Options, log *slog.Logger) error {
	a := &Agent{o: o, log: log, metrics: newMetrics(), trigger: make(chan struct{}, 1), registry: prometheus.NewRegistry(),
		proxyPoke: make(chan struct{}, 1)}
	stop, err := a.serve()
	if err != nil {
		return err
	}
	defer stop()
	if o.Static() {
		if err := a.installConflist(o.PodCIDRs); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
	if a.handle, err = netlink.NewHandle(); err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer a.handle.Close()
	for _, cidr := range o.ClusterCIDRs {
		m, err := egress.New(cidr)
		if err != nil {
			return err
		}
		a.masqs = append(a.masqs, m)
	}
	client, err := newClient(o.Kubeconfig)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Core().V1().Nodes()
	_ = inf.Informer().SetTransform(func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			n.ManagedFields, n.Status.Images = nil, nil
		}
		return obj, nil
	})
	poke := func(any) { a.poke() }
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }, DeleteFunc: poke,
	}); err != nil {
		return err
	}
	a.nodes = inf.Lister()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	log.Info("watching nodes", "node", o.NodeName)
	if o.Proxy {
		zone := ""
		if self, err := a.nodes.Get(o.NodeName); err == nil {
			zone = self.Labels[corev1.LabelTopologyZone]
		}
		if err := a.startProxy(ctx, factory, zone); err != nil {
			return err
		}
		log.Info("service proxy running", "table", proxy.Table, "families", len(a.proxiers))
	}
	a.loop(ctx)
	return nil
}

func newClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API server configuration: %w", err)
	}
	cfg.UserAgent = "flatnetd"
	return kubernetes.NewForConfig(cfg)
}

func (a *Agent) poke() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// minSyncInterval bounds how often events can cause a sync.
const minSyncInterval = 100 * time.Millisecond

func (a *Agent) loop(ctx context.Context) {
	t := time.NewTicker(a.o.Resync)
	defer t.Stop()
	for {
		a.sync(ctx)
		select {
		case <-ctx.Done():
			return
		case <-a.trigger:
		case <-t.C:
		}
		time.Sleep(minSyncInterval) // coalesce bursts of node events
	}
}

// sync computes the desired state from the node cache and applies it.
func (a *Agent) sync(ctx context.Context) {
	start := time.Now()
	err := a.syncOnce(ctx)
	a.metrics.observe(time.Since(start), err)
	if err != nil {
		a.log.Warn("sync failed", "err", err)
		a.lastErr.Store(&err)
		return
	}
	a.lastErr.Store(nil)
}

func (a *Agent) syncOnce(ctx context.Context) error {
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	var want []routes.Route
	var nodeIPs []netip.Addr
	var self *corev1.Node
	for _, n := range nodes {
		ips := internalIPs(n)
		nodeIPs = append(nodeIPs, ips...)
		if n.Name == a.o.NodeName {
			self = n
			continue
		}
		for _, c := range podCIDRs(n) {
			for _, ip := range ips {
				if c.Addr().Is4() == ip.Is4() { // each family's pod CIDR via the node's address of that family
					want = append(want, routes.Route{Dst: c, Via: ip})
					break
				}
			}
		}
	}
	a.metrics.nodes.Set(float64(len(nodes)))
	var errs []error
	zoneChanged := false
	for _, p := range a.proxiers {
		zoneChanged = self != nil && p.SetZone(self.Labels[corev1.LabelTopologyZone]) || zoneChanged
	}
	if zoneChanged {
		a.log.Info("node zone changed; resyncing Services", "zone", self.Labels[corev1.LabelTopologyZone])
		a.pokeProxy()
	}
	if self == nil || len(podCIDRs(self)) == 0 {
		a.log.Info("waiting for this node's pod CIDR", "node", a.o.NodeName)
	} else if err := a.installConflist(podCIDRs(self)); err != nil {
		errs = append(errs, err)
	}
	// The node forwards for pods and for Service traffic to other nodes even
	// before flatnet-cni (which also does this) has wired its first pod.
	v4, v6 := false, false
	for _, c := range a.o.ClusterCIDRs {
		v4, v6 = v4 || c.Addr().Is4(), v6 || c.Addr().Is6()
	}
	errs = append(errs, podnet.EnableForwarding(v4, v6))
	added, deleted, err := routes.Sync(a.handle, want)
	if added+deleted > 0 {
		a.log.Info("routes updated", "added", added, "deleted", deleted, "total", len(want))
	}
	errs = append(errs, err)
	if n, err := routes.Count(a.handle); err == nil {
		a.metrics.routes.Set(float64(n))
	}
	for i, m := range a.masqs {
		errs = append(errs, m.Sync(ctx, a.o.ClusterCIDRs[i], nodeIPs))
	}
	return errors.Join(errs...)
}

func (a *Agent) installConflist(cidrs []netip.Prefix) error {
	conf := a.o.Conf
	conf.PodCIDRs = cidrs
	data, err := cniconf.Render(conf)
	if err != nil {
		return err
	}
	changed, err := cniconf.Install(a.o.CNIConfDir, a.o.CNIConfName, data)
	if err != nil {
		return err
	}
	if changed {
		a.log.Info("CNI configuration installed", "file", a.o.CNIConfDir+"/"+a.o.CNIConfName, "podCIDRs", prefixList{&cidrs}.String())
	}
	a.installed.Store(true)
	a.metrics.conflist.Set(1)
	return nil
}

// internalIPs are the node's InternalIPs (one per family on a dual-stack
// node).
func internalIPs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				out = append(out, ip)
			}
		}
	}
	return out
}

func podCIDRs(n *corev1.Node) []netip.Prefix {
	list := n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		list = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// serve starts /healthz, /readyz and /metrics.
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
	return stopAll, nil
}

func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if p := a.lastErr.Load(); p != nil {
			http.Error(w, "last sync failed: "+(*p).Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.installed.Load() {
			http.Error(w, "CNI configuration not installed yet (no pod CIDR)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
