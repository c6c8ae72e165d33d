package agent

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/proxy"
)

// proxyMinInterval bounds how often Service and EndpointSlice events cause
// a sync: events within it are coalesced into one transaction.
const proxyMinInterval = 50 * time.Millisecond

// startProxy wires the service proxy to Service and EndpointSlice informers
// and runs its sync loop until ctx ends.
func (a *Agent) startProxy(ctx context.Context, factory informers.SharedInformerFactory, zone string) error {
	if err := enableBridgeNetfilter(); err != nil {
		a.log.Warn("bridged traffic will not see the proxy's rules", "err", err)
	}
	nft, err := knftables.New(knftables.IPv4Family, proxy.Table)
	if err != nil {
		return fmt.Errorf("service proxy: %w", err)
	}
	p := proxy.New(proxy.Config{NodeName: a.o.NodeName, NodeZone: zone, ClusterCIDR: a.o.ClusterCIDR, MasqueradeAll: a.o.MasqueradeAll},
		nft, proxy.KernelConntrack{}, a.log.With("component", "proxy"))
	p.Metrics().Register(a.registry)
	a.proxier = p
	poke := a.pokeProxy
	unwrap := func(obj any) any {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			return d.Obj
		}
		return obj
	}
	svcs := factory.Core().V1().Services().Informer()
	_ = svcs.SetTransform(dropManagedFields)
	if _, err := svcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.UpdateService(o.(*corev1.Service)); poke() },
		UpdateFunc: func(_, o any) { p.UpdateService(o.(*corev1.Service)); poke() },
		DeleteFunc: func(o any) {
			if s, ok := unwrap(o).(*corev1.Service); ok {
				p.DeleteService(s)
				poke()
			}
		},
	}); err != nil {
		return err
	}
	eps := factory.Discovery().V1().EndpointSlices().Informer()
	_ = eps.SetTransform(dropManagedFields)
	if _, err := eps.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.UpdateSlice(o.(*discoveryv1.EndpointSlice)); poke() },
		UpdateFunc: func(_, o any) { p.UpdateSlice(o.(*discoveryv1.EndpointSlice)); poke() },
		DeleteFunc: func(o any) {
			if s, ok := unwrap(o).(*discoveryv1.EndpointSlice); ok {
				p.DeleteSlice(s)
				poke()
			}
		},
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, eps.HasSynced) {
		return ctx.Err()
	}
	go a.proxyLoop(ctx, p, a.proxyPoke)
	return nil
}

func (a *Agent) pokeProxy() {
	select {
	case a.proxyPoke <- struct{}{}:
	default:
	}
}

// proxyLoop syncs on events (coalesced) and on the resync period; a failed
// sync is retried after a second.
func (a *Agent) proxyLoop(ctx context.Context, p *proxy.Proxier, trigger <-chan struct{}) {
	defer p.Close()
	t := time.NewTicker(a.o.Resync)
	defer t.Stop()
	retry := time.Duration(0)
	for {
		if err := p.Sync(ctx); err != nil {
			a.log.Warn("service proxy sync failed", "err", err)
			retry = time.Second
		} else {
			retry = 0
		}
		var again <-chan time.Time
		if retry > 0 {
			again = time.After(retry)
		}
		select {
		case <-ctx.Done():
			return
		case <-trigger:
		case <-t.C:
		case <-again:
		}
		time.Sleep(proxyMinInterval)
	}
}

func dropManagedFields(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		o.ManagedFields = nil
	case *discoveryv1.EndpointSlice:
		o.ManagedFields = nil
	}
	return obj, nil
}

// enableBridgeNetfilter makes bridged IPv4 traffic pass the IP hooks in this
// node's namespace, so a pod reaching a Service whose backend sits on the
// same bridge gets its reply de-NATed (see the architecture notes).
func enableBridgeNetfilter() error {
	const path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("br_netfilter not available: %w", err)
	}
	if len(cur) > 0 && cur[0] == '1' {
		return nil
	}
	return os.WriteFile(path, []byte("1"), 0o644)
}
