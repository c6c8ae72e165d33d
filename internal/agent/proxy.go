package agent

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/proxy"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

// startProxy feeds the service proxy the Services and EndpointSlices of
// the cluster, through reflectors that keep no copy of them (see feed),
// and starts each family's proxier (its own runner) until ctx ends.
func (a *Agent) startProxy(ctx context.Context, client *apiClient, zone string) error {
	if err := enableBridgeNetfilter(); err != nil {
		a.log.Warn("bridged traffic will not see the proxy's rules", "err", err)
	}
	if err := a.newProxiers(zone); err != nil {
		return err
	}
	svcs, eps := a.serviceFeed(), a.sliceFeed()
	for _, r := range []*cache.Reflector{
		reflector(client.core, "services", &corev1.Service{}, svcs),
		reflector(client.discovery, "endpointslices", &discoveryv1.EndpointSlice{}, eps),
	} {
		go r.RunWithContext(ctx)
	}
	if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, eps.HasSynced) {
		return ctx.Err()
	}
	for _, p := range a.proxiers {
		go p.Run(ctx)
	}
	return nil
}

// reflector lists and watches every object of resource (in every
// namespace) through c into store.
func reflector(c rest.Interface, resource string, obj runtime.Object, store cache.ReflectorStore) *cache.Reflector {
	lw := cache.NewListWatchFromClient(c, resource, metav1.NamespaceAll, fields.Everything())
	return cache.NewReflectorWithOptions(lw, obj, store, cache.ReflectorOptions{Name: resource})
}

// serviceFeed hands every Service to each proxier.
func (a *Agent) serviceFeed() *feed {
	return &feed{
		transform: proxy.SlimService,
		update: func(o any) {
			for _, p := range a.proxiers {
				p.UpdateService(o.(*corev1.Service))
			}
		},
		remove: func(o any) {
			for _, p := range a.proxiers {
				p.DeleteService(o.(*corev1.Service))
			}
		},
		entry: func(o any) (types.NamespacedName, feedEntry) {
			return objectKey(o), feedEntry{version: objectVersion(o)}
		},
		tombstone: func(key types.NamespacedName, _ feedEntry) any {
			return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		},
		entries: map[types.NamespacedName]feedEntry{},
	}
}

// sliceFeed hands every EndpointSlice to each proxier.
func (a *Agent) sliceFeed() *feed {
	return &feed{
		transform: proxy.SlimEndpointSlice,
		update: func(o any) {
			for _, p := range a.proxiers {
				p.UpdateSlice(o.(*discoveryv1.EndpointSlice))
			}
		},
		remove: func(o any) {
			for _, p := range a.proxiers {
				p.DeleteSlice(o.(*discoveryv1.EndpointSlice))
			}
		},
		entry: func(o any) (types.NamespacedName, feedEntry) {
			s := o.(*discoveryv1.EndpointSlice)
			owner, owned := s.Labels[discoveryv1.LabelServiceName]
			return objectKey(o), feedEntry{version: s.ResourceVersion, owner: owner, owned: owned, family: string(s.AddressType)}
		},
		tombstone: func(key types.NamespacedName, e feedEntry) any {
			s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
				AddressType: discoveryv1.AddressType(e.family)}
			if e.owned {
				s.Labels = map[string]string{discoveryv1.LabelServiceName: e.owner}
			}
			return s
		},
		entries: map[types.NamespacedName]feedEntry{},
	}
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
			MasqueradeAll: a.o.MasqueradeAll, Events: a.events, ReleaseMemory: true}
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
