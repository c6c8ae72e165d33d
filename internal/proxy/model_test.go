package proxy

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestServicePorts(t *testing.T) {
	s := service("lb", "10.96.0.5", corev1.ServicePort{Name: "a", Port: 80}, corev1.ServicePort{Name: "b", Port: 53, Protocol: corev1.ProtocolUDP, NodePort: 30053},
		corev1.ServicePort{Name: "c", Port: 9, Protocol: corev1.ProtocolSCTP})
	s.Spec.Type = corev1.ServiceTypeLoadBalancer
	s.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1"}
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.2"}, {Hostname: "lb.example"}}
	s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	s.Spec.HealthCheckNodePort = 32123
	ports := servicePorts(s, IPv4)
	if len(ports) != 2 {
		t.Fatalf("%d ports, want 2 (SCTP skipped)", len(ports))
	}
	a, b := ports[0], ports[1]
	if a.Name.Protocol != corev1.ProtocolTCP || a.Name.String() != "ns/lb/tcp/a" || b.NodePort != 30053 {
		t.Fatalf("ports: %+v %+v", a, b)
	}
	if len(a.ExternalIPs) != 2 || a.ExternalIPs[1].String() != "192.0.2.2" {
		t.Fatalf("external IPs (IPv4, spec then status): %v", a.ExternalIPs)
	}
	if a.AffinityTimeout != 10800*time.Second || !a.ExternalLocal || a.HealthCheckPort != 32123 {
		t.Fatalf("affinity default / policy: %+v", a)
	}
	for _, ignored := range []*corev1.Service{
		service("headless", "None", corev1.ServicePort{Port: 80}),
		func() *corev1.Service {
			s := service("ext", "", corev1.ServicePort{Port: 80})
			s.Spec.Type = corev1.ServiceTypeExternalName
			return s
		}(),
		service("v6", "fd00::10", corev1.ServicePort{Port: 80}),
	} {
		if got := servicePorts(ignored, IPv4); len(got) != 0 {
			t.Errorf("%s: %d ports, want none", ignored.Name, len(got))
		}
	}
}

func TestUsable(t *testing.T) {
	e := func(ip string, ready, serving, terminating, local bool, zones ...string) Endpoint {
		return Endpoint{IP: netip.MustParseAddr(ip), Port: 80, Ready: ready, Serving: serving, Terminating: terminating, Local: local, Zones: zones}
	}
	eps := []Endpoint{e("10.0.0.1", true, true, false, true, "a"), e("10.0.0.2", true, true, false, false, "b"),
		e("10.0.0.3", false, true, true, true, "a"), e("10.0.0.4", false, false, false, false, "a")}
	ips := func(list []Endpoint) string {
		var s []string
		for _, x := range list {
			s = append(s, x.IP.String())
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		name  string
		eps   []Endpoint
		local bool
		zone  string
		hints bool
		want  string
	}{
		{"ready only", eps, false, "", false, "10.0.0.1,10.0.0.2"},
		{"local", eps, true, "", false, "10.0.0.1"},
		{"zone hints", eps, false, "b", true, "10.0.0.2"},
		{"hints ignored without trafficDistribution", eps, false, "b", false, "10.0.0.1,10.0.0.2"},
		{"zone without a match falls back to all", eps, false, "c", true, "10.0.0.1,10.0.0.2"},
		{"terminating fallback", eps[2:], false, "", false, "10.0.0.3"},
		{"nothing usable", eps[3:], false, "", false, ""},
	} {
		if got := ips(usable(tc.eps, tc.local, tc.zone, tc.hints)); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestSliceEndpointsMergesAndDeduplicates(t *testing.T) {
	s1 := slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1"), ready("10.244.2.2", "node-2"))
	s2 := slice("web", 8080, corev1.ProtocolTCP, ready("10.244.2.2", "node-2"))
	s2.Name = "web-def"
	v6 := slice("web", 8080, corev1.ProtocolTCP, ready("fd00::2", "node-1"))
	v6.AddressType = discoveryv1.AddressTypeIPv6
	got := sliceEndpoints([]*discoveryv1.EndpointSlice{s1, s2, v6}, "node-1", IPv4)[portKey{"", corev1.ProtocolTCP}]
	if len(got) != 2 || !got[0].Local || got[1].Local {
		t.Fatalf("endpoints: %+v", got)
	}
}

// A second sync removes the chains of a deleted Service and keeps the table
// consistent; an affinity Service gets its per-endpoint sets.
func TestResyncDeletesStaleChains(t *testing.T) {
	p, fake, ct := newFakeProxier(t)
	web := service("web", "10.96.0.10", corev1.ServicePort{Port: 80})
	web.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	p.UpdateService(web)
	p.UpdateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1")))
	dns := service("dns", "10.96.0.53", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP})
	p.UpdateService(dns)
	p.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.3", "node-1")))
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	if !strings.Contains(dump, "add set ip flatnet-proxy aff-") || !strings.Contains(dump, "update @aff-") {
		t.Fatalf("no affinity set:\n%s", dump)
	}
	p.DeleteService(web)
	p.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.4", "node-1")))
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	dump = fake.Dump()
	if strings.Contains(dump, "ns/web") || strings.Contains(dump, "aff-") || strings.Contains(dump, "10.244.1.3") {
		t.Fatalf("stale objects after the Service was deleted:\n%s", dump)
	}
	if !strings.Contains(strings.Join(ct.cleared, ";"), "udp 10.96.0.53:53 answered by 10.244.1.3") {
		t.Fatalf("conntrack of the replaced UDP endpoint not cleared: %v", ct.cleared)
	}
	if strings.Count(dump, "ct state invalid drop") != 1 {
		t.Fatalf("INVALID packets are not dropped:\n%s", dump)
	}
}

// After any sequence of changes, the table a partial sync leaves is the
// table a full sync of the same state writes.
func TestPartialSyncEqualsFullSync(t *testing.T) {
	p, fake, _ := newFakeProxier(t)
	// What p was given, to give a fresh proxier.
	services, slicesOf := map[string]*corev1.Service{}, map[string]*discoveryv1.EndpointSlice{}
	update := func(s *corev1.Service) { services[s.Name] = s; p.UpdateService(s) }
	remove := func(s *corev1.Service) { delete(services, s.Name); p.DeleteService(s) }
	updateSlice := func(s *discoveryv1.EndpointSlice) { slicesOf[s.Name] = s; p.UpdateSlice(s) }
	np := service("np", "10.96.0.30", corev1.ServicePort{Name: "http", Port: 80, NodePort: 30080})
	np.Spec.Type = corev1.ServiceTypeNodePort
	steps := []func(){
		func() {
			update(service("web", "10.96.0.10", corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}))
			updateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1"), ready("10.244.2.2", "node-2")))
			update(np)
			updateSlice(slice("np", 8080, corev1.ProtocolTCP, ready("10.244.1.5", "node-1")))
		},
		func() { updateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.3", "node-1"))) },
		func() { // a second user of the shared chain lb-1, which exists
			update(service("api", "10.96.0.12", corev1.ServicePort{Name: "http", Port: 80}))
			updateSlice(slice("api", 8080, corev1.ProtocolTCP, ready("10.244.1.4", "node-1")))
		},
		func() {
			s := service("sticky", "10.96.0.11", corev1.ServicePort{Name: "http", Port: 80})
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			update(s)
			updateSlice(slice("sticky", 8080, corev1.ProtocolTCP, ready("10.244.1.3", "node-1"), ready("10.244.3.3", "node-3")))
		},
		func() { updateSlice(slice("sticky", 8080, corev1.ProtocolTCP, ready("10.244.3.3", "node-3"))) },
		func() { remove(service("web", "10.96.0.10")) },
		func() {
			remove(np)
			update(service("sticky", "10.96.0.11", corev1.ServicePort{Name: "http", Port: 81}))
		},
	}
	for i, step := range steps {
		step()
		if err := p.Sync(context.Background()); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		fresh, freshFake, _ := newFakeProxier(t)
		for _, s := range services {
			fresh.UpdateService(s)
		}
		for _, s := range slicesOf {
			fresh.UpdateSlice(s)
		}
		if err := fresh.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got, want := sortedLines(fake.Dump()), sortedLines(freshFake.Dump()); got != want {
			t.Fatalf("step %d: partial sync differs from a full sync:\n--- partial\n%s\n--- full\n%s", i, got, want)
		}
	}
}

func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
