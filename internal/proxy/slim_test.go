package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// fullMeta is object metadata with everything the API server and clients
// put there, none of which the proxy reads but the identity.
func fullMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name), ResourceVersion: "42", Generation: 3,
		GenerateName: name + "-", CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		Labels:          map[string]string{"app": name, discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
		Annotations:     map[string]string{corev1.LastAppliedConfigAnnotation: `{"big":"object"}`, corev1.EndpointsLastChangeTriggerTime: "2026-01-02T03:04:05.123456Z"},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: name, UID: "owner"}},
		Finalizers:      []string{"service.kubernetes.io/load-balancer-cleanup"},
		ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply, FieldsType: "FieldsV1"}},
	}
}

// fullServices are Services of every kind the proxy handles, each with
// every field set.
func fullServices() []*corev1.Service {
	port := func(name string, proto corev1.Protocol, p, nodePort int32) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Protocol: proto, Port: p, NodePort: nodePort, TargetPort: intstr.FromString("web"), AppProtocol: ptr.To("http")}
	}
	svc := func(name string, typ corev1.ServiceType, ips []string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: fullMeta(name), Spec: corev1.ServiceSpec{Type: typ, ClusterIP: ips[0], ClusterIPs: ips, Ports: ports,
			Selector: map[string]string{"app": name}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyPreferDualStack), PublishNotReadyAddresses: true},
			Status: corev1.ServiceStatus{Conditions: []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue}}}}
	}
	plain := svc("plain", corev1.ServiceTypeClusterIP, []string{"10.96.0.10", "fd00:96::10"}, port("http", corev1.ProtocolTCP, 80, 0), port("dns", corev1.ProtocolUDP, 53, 0))
	lb := svc("lb", corev1.ServiceTypeLoadBalancer, []string{"10.96.0.11", "fd00:96::11"}, port("", corev1.ProtocolTCP, 443, 30443))
	lb.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1"}
	lb.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "2001:db8:1::/48"}
	lb.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	lb.Spec.AllocateLoadBalancerNodePorts, lb.Spec.LoadBalancerClass = ptr.To(true), ptr.To("example.com/lb")
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.2", Hostname: "lb.example", IPMode: ptr.To(corev1.LoadBalancerIPModeVIP),
		Ports: []corev1.PortStatus{{Port: 443, Protocol: corev1.ProtocolTCP}}}, {IP: "2001:db8::2"}, {Hostname: "only.example"}}
	sticky := svc("sticky", corev1.ServiceTypeNodePort, []string{"10.96.0.12"}, port("http", corev1.ProtocolTCP, 80, 30080))
	sticky.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	sticky.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(60))}}
	sticky.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	zoned := svc("zoned", corev1.ServiceTypeClusterIP, []string{"fd00:96::13", "10.96.0.13"}, port("http", corev1.ProtocolTCP, 80, 0))
	zoned.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	external := svc("external", corev1.ServiceTypeExternalName, []string{""}, port("http", corev1.ProtocolTCP, 80, 0))
	external.Spec.ExternalName = "example.com"
	headless := svc("headless", corev1.ServiceTypeClusterIP, []string{"None"}, port("http", corev1.ProtocolTCP, 80, 0))
	return []*corev1.Service{plain, lb, sticky, zoned, external, headless}
}

// fullSlice is an EndpointSlice of svc of each address type with every
// field set: a local ready endpoint, a remote one, a terminating one
// still serving, each with zone hints.
func fullSlice(svc string, at discoveryv1.AddressType, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: fullMeta(svc + "-" + string(at)), AddressType: at}
	for _, p := range []struct {
		name  string
		proto corev1.Protocol
		port  int32
	}{{"http", corev1.ProtocolTCP, 8080}, {"dns", corev1.ProtocolUDP, 5353}, {"", corev1.ProtocolTCP, 8443}} {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.name), Protocol: ptr.To(p.proto), Port: ptr.To(p.port), AppProtocol: ptr.To("http")})
	}
	for i, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Hostname: ptr.To("pod"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(i < 2), Serving: ptr.To(true), Terminating: ptr.To(i == 2)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "pod", UID: "pod-uid"},
			NodeName:   ptr.To([]string{"node-1", "node-2", "node-1"}[i%3]), Zone: ptr.To("zone-a"),
			Hints:              &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: []string{"zone-a", "zone-b"}[i%2]}}, ForNodes: []discoveryv1.ForNode{{Name: "node-1"}}},
			DeprecatedTopology: map[string]string{"topology.kubernetes.io/zone": "zone-a"}})
	}
	return s
}

func fullSlices() []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	for _, svc := range []string{"plain", "lb", "sticky", "zoned", "headless"} {
		out = append(out, fullSlice(svc, discoveryv1.AddressTypeIPv4, "10.244.1.2", "10.244.2.2", "10.244.1.3"),
			fullSlice(svc, discoveryv1.AddressTypeIPv6, "fd00:244:0:1::2", "fd00:244:0:2::2", "fd00:244:0:1::3"))
	}
	return out
}

// The proxier derives the same ports, endpoints, trigger times and table
// from slim objects as from full ones, in each family, and a slim object
// keeps nothing else.
func TestSlimObjectsProgramTheSame(t *testing.T) {
	for _, fam := range []Family{IPv4, IPv6} {
		for _, svc := range fullServices() {
			svc.Spec.HealthCheckNodePort = 32123 // not in the tables below: it would listen
			full := svc.DeepCopy()
			slim, _ := SlimService(svc) // in place
			if got, want := servicePorts(slim.(*corev1.Service), fam), servicePorts(full, fam); !reflect.DeepEqual(got, want) {
				t.Errorf("%s %s: ports of the slim Service %+v, of the full one %+v", fam, svc.Name, got, want)
			}
		}
		for _, sl := range fullSlices() {
			full := sl.DeepCopy()
			slim, _ := SlimEndpointSlice(sl)
			for _, node := range []string{"node-1", "node-2"} {
				got := sliceEndpoints([]*discoveryv1.EndpointSlice{slim.(*discoveryv1.EndpointSlice)}, node, fam)
				if want := sliceEndpoints([]*discoveryv1.EndpointSlice{full}, node, fam); !reflect.DeepEqual(got, want) {
					t.Errorf("%s %s on %s: endpoints of the slim slice %+v, of the full one %+v", fam, sl.Name, node, got, want)
				}
			}
		}
		full, fullFake := fakeProxierOf(t, fam, func(o any) (any, error) { return o, nil })
		slim, slimFake := fakeProxierOf(t, fam, func(o any) (any, error) {
			if s, ok := o.(*corev1.Service); ok {
				return SlimService(s)
			}
			return SlimEndpointSlice(o)
		})
		if !reflect.DeepEqual(full.triggers, slim.triggers) || len(full.triggers) == 0 {
			t.Errorf("%s: trigger times %v from slim slices, %v from full ones", fam, slim.triggers, full.triggers)
		}
		for _, p := range []*Proxier{full, slim} {
			if err := p.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := sortedLines(slimFake.Dump()), sortedLines(fullFake.Dump()); got != want {
			t.Errorf("%s: the table from slim objects differs:\n--- slim\n%s\n--- full\n%s", fam, got, want)
		}
	}
	slim, _ := SlimService(fullServices()[1])
	want := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lb", UID: "uid-lb", ResourceVersion: "42",
		CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}}
	if s := slim.(*corev1.Service); !reflect.DeepEqual(s.ObjectMeta, want.ObjectMeta) || s.Spec.Selector != nil || s.Spec.Ports[0].AppProtocol != nil {
		t.Errorf("slim Service keeps more than the proxy reads: %+v", s)
	}
	sl, _ := SlimEndpointSlice(fullSlices()[0])
	if s := sl.(*discoveryv1.EndpointSlice); len(s.Labels) != 1 || len(s.Annotations) != 1 || s.Endpoints[0].TargetRef != nil || s.Endpoints[0].Hints.ForNodes != nil {
		t.Errorf("slim EndpointSlice keeps more than the proxy reads: %+v", s)
	}
}

// fakeProxierOf is a proxier of family fam on node-1 in zone-a over a
// Fake, given fullServices and fullSlices through transform.
func fakeProxierOf(t *testing.T, fam Family, transform func(any) (any, error)) (*Proxier, *nft.Fake) {
	cidr := "10.244.0.0/16"
	if fam == IPv6 {
		cidr = "fd00:244::/48"
	}
	fake := nft.NewFake(fam, Table)
	p := New(Config{Family: fam, NodeName: "node-1", NodeZone: "zone-a", ClusterCIDR: netip.MustParsePrefix(cidr)}, fake,
		&recordingConntrack{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(p.Close)
	for _, s := range fullServices() {
		o, _ := transform(s)
		p.UpdateService(o.(*corev1.Service))
	}
	for _, s := range fullSlices() {
		o, _ := transform(s)
		p.UpdateSlice(o.(*discoveryv1.EndpointSlice))
	}
	return p, fake
}
