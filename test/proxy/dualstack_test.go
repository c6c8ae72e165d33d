package proxy_test

import (
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/flatnet-io/flatnet/internal/probe"
	"github.com/flatnet-io/flatnet/internal/proxy"
)

// dualStack gives a Service made by svc() an IPv6 ClusterIP after its IPv4
// one, as the API server allocates for ipFamilyPolicy PreferDualStack.
func dualStack(ip6 string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP, ip6}
	}
}

// slice6 is the IPv6 EndpointSlice of a Service made by svc(): the pods'
// IPv6 addresses.
func slice6(service string, eps ...ep) *discoveryv1.EndpointSlice {
	s := slice(service, eps...)
	s.Name, s.AddressType = service+"-x6", discoveryv1.AddressTypeIPv6
	for i, e := range eps {
		s.Endpoints[i].Addresses = []string{e.p.ip6}
	}
	return s
}

// A dual-stack Service works over both families, each through its own
// proxier and table: the ClusterIP of each family balances over the pods'
// addresses of that family (no masquerade: the pod sees the client pod's
// own IPv6 address), the NodePort answers on the node's IPv6 address from
// the outside host, a UDP port works over IPv6, and an IPv6 ClusterIP
// without endpoints rejects at once.
func TestDualStackService(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	if client.ip6 == "" {
		t.Fatal("pods got no IPv6 address from flatnet-cni")
	}
	web := svc("web", "10.96.0.150", dualStack("fd00:96::150"), nodePort(30150, 30151))
	for _, p := range []*proxy.Proxier{e.proxier, e.proxier6} {
		p.UpdateService(web)
		p.UpdateSlice(slice("web", readyOn(a, "node-1"), readyOn(b, "node-1")))
		p.UpdateSlice(slice6("web", readyOn(a, "node-1"), readyOn(b, "node-1")))
		p.UpdateService(svc("empty", "10.96.0.151", dualStack("fd00:96::151")))
	}
	e.sync()
	// A new pod's IPv6 path to its gateway takes a moment (neighbour
	// discovery on the fresh bridge port); wait for the first connection.
	deadline := time.Now().Add(5 * time.Second)
	for _, err := tcp(client.ns, "[fd00:96::150]:80"); err != nil; _, err = tcp(client.ns, "[fd00:96::150]:80") {
		if time.Now().After(deadline) {
			t.Fatalf("no IPv6 connection through the ClusterIP within 5 s: %v", err)
		}
	}
	seen := spread(t, client.ns, "[fd00:96::150]:80", 30)
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Errorf("IPv6 ClusterIP: 30 connections reached %v, want both pods", seen)
	}
	r, err := tcp(client.ns, "[fd00:96::150]:80")
	if err != nil || seenClient(r) != client.ip6 {
		t.Errorf("IPv6 ClusterIP: backend saw %q (%v), want the client pod's own %s", seenClient(r), err, client.ip6)
	}
	if r, err := tcp(client.ns, "10.96.0.150:80"); err != nil || seenClient(r) != client.ip {
		t.Errorf("IPv4 ClusterIP of the same Service: reply %q, %v", r, err)
	}
	if r, err := tcp(e.outside, net.JoinHostPort(nodeUplinkIP6, "30150")); err != nil || (backendOf(r) != "a" && backendOf(r) != "b") {
		t.Errorf("IPv6 NodePort from the outside host: reply %q, %v", r, err)
	}
	if r, err := probe.UDPRequest(client.ns, "[fd00:96::150]:81", "x"); err != nil || (backendOf(r) != "a" && backendOf(r) != "b") {
		t.Errorf("UDP over the IPv6 ClusterIP: reply %q, %v", r, err)
	}
	// Refused at once, not after the client's 1 s SYN retransmit.
	refused(t, client.ns, "[fd00:96::151]:80") // no endpoints
	refused(t, client.ns, "[fd00:96::150]:99") // unknown port
}
