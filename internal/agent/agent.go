// Package agent is flatnetd, the node agent. It watches Nodes through the
// API server and keeps three things true on its node:
//
//   - the CNI conflist in --cni-conf-dir describes this node's pod CIDRs
//     (Node.spec.podCIDRs, from the controller manager's node IPAM); until
//     the node has them there is no conflist and the runtime cannot start
//     pods, the intended "not ready" state;
//   - IP forwarding on, and a route to every other node's pod CIDR via its
//     InternalIP (package routes);
//   - pod egress leaving the cluster is masqueraded (package egress, an
//     engine per family on its own runner, given every node's addresses);
//   - with --proxy (the default), Services are programmed into nftables by
//     the service proxy (package proxy), which replaces kube-proxy; bridged
//     IPv4 traffic is sent through the IP hooks
//     (net.bridge.bridge-nf-call-iptables=1 in the node's namespace) so that
//     replies from a backend on the same bridge are de-NATed;
//   - with --policy (the default), NetworkPolicy is enforced by an engine
//     per family (package policy; policy.go wires its informers), and
//     bridged traffic goes through the IP hooks for it too; flatnetd also
//     answers the CNI plugin's admissions on --policy-socket (a new pod is
//     isolated before its ADD returns), guards the bridge ports against
//     spoofed sources, cuts established connections a change denies
//     (--policy-revoke), and serves verdict metrics and the log of denied
//     connections (/policy/log).
//
// Design notes: Node informer events only poke a runner (package runner:
// bounded frequency, backoff on failure); each sync computes the whole
// desired state from the informer cache and applies it, level triggered,
// and a periodic resync repairs anything changed behind the agent's back.
// Node updates that change nothing the agent uses (status heartbeats,
// conditions, images) do not cause a sync. Each service proxy (one per
// family) runs its own runner; the agent only feeds it the Services and
// EndpointSlices, through reflectors into a store that keeps no copy of
// them (feed.go: the proxiers keep what they program of each, and an
// informer's cache of every object was most of flatnetd's memory). The API
// client knows core/v1, discovery/v1 and networking/v1 only (client.go).
// On exit nothing is flushed: routes, rules and the conflist stay as they
// are until a new agent replaces them, so a restart does not disturb
// established connections. With --pod-cidr the agent runs without an API
// server and only installs the conflist.
//
// Health (health.go): /healthz fails only when a sync loop stops making
// progress; a node-sync error (a route the kernel refuses, a read-only
// sysctl) is a metric, a log line and a Warning Event on the Node, not a
// reason to be restarted. /readyz: the conflist is installed and every
// proxy and policy engine has synced once.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet-io/flatnet/internal/cniconf"
	"github.com/flatnet-io/flatnet/internal/egress"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/policy"
	"github.com/flatnet-io/flatnet/internal/proxy"
	"github.com/flatnet-io/flatnet/internal/routes"
	"github.com/flatnet-io/flatnet/internal/runner"
)

// Agent is one node's flatnetd.
type Agent struct {
	o       *Options
	log     *slog.Logger
	nodes   corelisters.NodeLister
	handle  *netlink.Handle
	egress  []*egress.Engine // one per cluster CIDR, each on its own runner
	metrics *metrics

	registry *prometheus.Registry
	proxiers []*proxy.Proxier // one per cluster CIDR family; none without --proxy
	policies []*policy.Engine // one per cluster CIDR family; none without --policy
	guard    *policy.Guard    // anti-spoofing; nil without --policy
	runner   *runner.Runner   // of the node sync
	events   *eventSink

	installed atomic.Bool // the conflist is in place
	lastErr   atomic.Pointer[error]

	tables    func(nft.Family, string) (nft.Tables, error) // nil: the kernel's (tests: Fakes)
	policyLog atomic.Pointer[policy.Log]                   // denied connections; nil without --policy
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, o *Options, log *slog.Logger) error {
	a := &Agent{o: o, log: log, metrics: newMetrics(), registry: prometheus.NewRegistry()}
	a.runner = runner.New(a.sync, runner.Options{MinInterval: minSyncInterval, MaxInterval: o.Resync,
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second})
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
		a.egress = append(a.egress, egress.NewEngine(m, cidr, log.With("component", "egress", "cidr", cidr.String())))
	}
	client, err := newClient(o.Kubeconfig)
	if err != nil {
		return err
	}
	a.events = newEventSink(ctx, client, o.NodeName)
	defer a.events.shutdown()
	if err := a.watchNodes(ctx, client); err != nil {
		return err
	}
	log.Info("watching nodes", "node", o.NodeName)
	if o.Proxy {
		zone := ""
		if self, err := a.nodes.Get(o.NodeName); err == nil {
			zone = self.Labels[corev1.LabelTopologyZone]
		}
		if err := a.startProxy(ctx, client, zone); err != nil {
			return err
		}
		log.Info("service proxy running", "table", proxy.Table, "families", len(a.proxiers))
	}
	if o.Policy {
		if err := a.startPolicy(ctx, newPolicyInformers(client)); err != nil {
			return err
		}
		log.Info("network policy running", "table", policy.Table, "families", len(a.policies))
	}
	for _, e := range a.egress {
		go e.Run(ctx)
	}
	a.runner.Run(ctx)
	return nil
}

// watchNodes starts the Node informer (managedFields and images dropped
// from its cache) and waits for it to sync; only Node changes that matter
// to the agent poke its runner.
func (a *Agent) watchNodes(ctx context.Context, client *apiClient) error {
	inf := informer(client.core, "nodes", &corev1.Node{})
	_ = inf.SetTransform(func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			n.ManagedFields, n.Status.Images = nil, nil
		}
		return obj, nil
	})
	poke := func(any) { a.runner.Poke() }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, DeleteFunc: poke,
		UpdateFunc: func(old, cur any) {
			if nodeChanged(old.(*corev1.Node), cur.(*corev1.Node)) {
				a.runner.Poke()
			}
		},
	}); err != nil {
		return err
	}
	a.nodes = corelisters.NewNodeLister(inf.GetIndexer())
	go inf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	return nil
}

// minSyncInterval bounds how often node events can cause a sync.
const minSyncInterval = 100 * time.Millisecond

// nodeChanged reports whether an update changes what the agent programs
// from a Node: its pod CIDRs, its addresses, its zone.
func nodeChanged(old, cur *corev1.Node) bool {
	return !slices.Equal(podCIDRs(old), podCIDRs(cur)) || !slices.Equal(internalIPs(old), internalIPs(cur)) ||
		old.Labels[corev1.LabelTopologyZone] != cur.Labels[corev1.LabelTopologyZone]
}

// sync computes the desired state from the node cache and applies it. Its
// errors are reported (metric, log, Event on the Node) and retried, but the
// runner is told of success: a node-sync error is no sign of a stuck loop
// and must not fail liveness.
func (a *Agent) sync(ctx context.Context) error {
	start := time.Now()
	err := a.syncOnce(ctx)
	a.metrics.observe(time.Since(start), err)
	if err != nil {
		a.log.Warn("sync failed", "err", err)
		a.lastErr.Store(&err)
		a.events.nodeSyncFailed(err)
		return err
	}
	a.lastErr.Store(nil)
	a.events.nodeSyncOK()
	return nil
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
	for _, e := range a.egress {
		e.SetNodeIPs(nodeIPs)
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
