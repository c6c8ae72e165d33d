package agent

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/proxy"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

// startProxy wires the service proxy to Service and EndpointSlice informers
// and starts each family's proxier (its own runner) until ctx ends.
func (a *Agent) startProxy(ctx context.Context, client *apiClient, zone string) error {
	if err := enableBridgeNetfilter(); err != nil {
		a.log.Warn("bridged traffic will not see the proxy's rules", "err", err)
	}
	if err := a.newProxiers(zone); err != nil {
		return err
	}
	all := func(f func(p *proxy.Proxier)) {
		for _, p := range a.proxiers {
			f(p)
		}
	}
	unwrap := func(obj any) any {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			return d.Obj
		}
		return obj
	}
	// The informers keep only what the proxy reads of each object (see
	// proxy.SlimService): at 10,000 Services their caches are most of
	// flatnetd's memory.
	svcs := informer(client.core, "services", &corev1.Service{})
	_ = svcs.SetTransform(proxy.SlimService)
	if _, err := svcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { all(func(p *proxy.Proxier) { p.UpdateService(o.(*corev1.Service)) }) },
		UpdateFunc: func(_, o any) { all(func(p *proxy.Proxier) { p.UpdateService(o.(*corev1.Service)) }) },
		DeleteFunc: func(o any) {
			if s, ok := unwrap(o).(*corev1.Service); ok {
				all(func(p *proxy.Proxier) { p.DeleteService(s) })
			}
		},
	}); err != nil {
		return err
	}
	eps := informer(client.discovery, "endpointslices", &discoveryv1.EndpointSlice{})
	_ = eps.SetTransform(proxy.SlimEndpointSlice)
	if _, err := eps.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { all(func(p *proxy.Proxier) { p.UpdateSlice(o.(*discoveryv1.EndpointSlice)) }) },
		UpdateFunc: func(_, o any) { all(func(p *proxy.Proxier) { p.UpdateSlice(o.(*discoveryv1.EndpointSlice)) }) },
		DeleteFunc: func(o any) {
			if s, ok := unwrap(o).(*discoveryv1.EndpointSlice); ok {
				all(func(p *proxy.Proxier) { p.DeleteSlice(s) })
			}
		},
	}); err != nil {
		return err
	}
	go svcs.RunWithContext(ctx)
	go eps.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, eps.HasSynced) {
		return ctx.Err()
	}
	for _, p := range a.proxiers {
		go p.Run(ctx)
	}
	return nil
}

// newProxiers makes one proxier per family of the cluster, as kube-proxy
// runs on a dual-stack node; every event goes to each, and each keeps what
// is of its family.
func (a *Agent) newProxiers(zone string) error {
	for _, cidr := range a.o.ClusterCIDRs {
		fam := proxy.FamilyOf(cidr.Addr())
		tables, err := nft.New(fam, proxy.Table)
		if err != nil {
			return fmt.Errorf("service proxy: %w", err)
		}
		cfg := proxy.Config{Family: fam, NodeName: a.o.NodeName, NodeZone: zone, ClusterCIDR: cidr,
			MasqueradeAll: a.o.MasqueradeAll, Events: a.events}
		p := proxy.New(cfg, tables, proxy.KernelConntrack{Family: fam}, a.log.With("component", "proxy", "family", fam.String()))
		p.Metrics().Register(a.registry)
		a.proxiers = append(a.proxiers, p)
	}
	return nil
}

// enableBridgeNetfilter makes bridged IPv4 and IPv6 traffic pass the IP
// hooks in this node's namespace, so a pod reaching a Service whose backend
// sits on the same bridge gets its reply de-NATed (see the architecture
// notes).
func enableBridgeNetfilter() error {
	for _, path := range []string{"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"} {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("br_netfilter not available: %w", err)
		}
		if err := sysctl.Ensure(path, "1"); err != nil {
			return err
		}
	}
	return nil
}
