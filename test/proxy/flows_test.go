package proxy_test

import (
	"errors"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// spread makes n TCP connections to addr from nsPath and counts backends.
func spread(t *testing.T, nsPath, addr string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		r, err := tcp(nsPath, addr)
		if err != nil {
			t.Fatalf("connect %s: %v", addr, err)
		}
		seen[backendOf(r)]++
	}
	return seen
}

// refused asserts that a TCP connection is refused at once (ICMP reject).
func refused(t *testing.T, nsPath, addr string) {
	t.Helper()
	start := time.Now()
	_, err := tcp(nsPath, addr)
	if err == nil {
		t.Fatalf("%s: connected, want refused", addr)
	}
	if d := time.Since(start); d > time.Second || !isRefusal(err) {
		t.Fatalf("%s: %v after %s, want an immediate refusal", addr, err, d)
	}
}

// dropped asserts that a TCP connection gets no answer at all.
func dropped(t *testing.T, nsPath, addr string) {
	t.Helper()
	_, err := tcp(nsPath, addr)
	if err == nil || isRefusal(err) {
		t.Fatalf("%s: %v, want a silent drop (timeout)", addr, err)
	}
}

func isRefusal(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// ClusterIP over TCP and UDP; random balancing reaches every ready
// endpoint; pod clients keep their own address (no masquerade).
func TestClusterIPBalancesTCPAndUDP(t *testing.T) {
	e := newEnv(t, "")
	a, b, c, client := e.addPod("a"), e.addPod("b"), e.addPod("c"), e.addPod("client")
	e.serve(svc("web", "10.96.0.10"), readyOn(a, "node-1"), readyOn(b, "node-2"), readyOn(c, "node-3"))
	seen := spread(t, client.ns, "10.96.0.10:80", 90)
	for _, p := range []string{"a", "b", "c"} {
		if seen[p] < 10 { // expected 30 each; fewer than 10 has p < 1e-5
			t.Errorf("backend %s got %d of 90 connections: %v", p, seen[p], seen)
		}
	}
	r, err := tcp(client.ns, "10.96.0.10:80")
	if err != nil || seenClient(r) != client.ip {
		t.Fatalf("backend saw %q (%v), want the client pod's own %s", r, err, client.ip)
	}
	udp := map[string]bool{}
	for range 30 {
		r, err := probe.UDPRequest(client.ns, "10.96.0.10:81", "x")
		if err != nil {
			t.Fatalf("UDP via ClusterIP: %v", err)
		}
		udp[backendOf(r)] = true
	}
	if len(udp) < 2 {
		t.Errorf("UDP from 30 sockets reached only %v", udp)
	}
	// From the node itself (output hook): works, masqueraded to a node address.
	r, err = tcp(e.node, "10.96.0.10:80")
	if err != nil || !strings.HasPrefix(seenClient(r), "10.244.1.1") && seenClient(r) != nodeUplinkIP {
		t.Fatalf("node -> ClusterIP: %q, %v", r, err)
	}
}

// No endpoints: immediate reject; unknown port on a ClusterIP: reject;
// headless and ExternalName Services: nothing programmed.
func TestRejectsAndIgnoredServices(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	e.proxier.UpdateService(svc("empty", "10.96.0.20"))
	e.proxier.UpdateService(svc("web", "10.96.0.21"))
	e.proxier.UpdateSlice(slice("web", readyOn(a, "node-1")))
	headless := svc("headless", "None")
	e.proxier.UpdateService(headless)
	e.proxier.UpdateSlice(slice("headless", readyOn(a, "node-1")))
	e.proxier.UpdateService(svc("ext", "", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeExternalName
		s.Spec.ExternalName = "example.com"
	}))
	e.sync()
	refused(t, client.ns, "10.96.0.20:80")
	refused(t, e.node, "10.96.0.20:80")
	refused(t, client.ns, "10.96.0.21:9999")
	if _, err := tcp(client.ns, "10.96.0.21:80"); err != nil {
		t.Fatalf("working Service next to rejected ones: %v", err)
	}
	// 0 -> N endpoints: the same VIP starts answering.
	e.proxier.UpdateSlice(slice("empty", readyOn(a, "node-1")))
	e.sync()
	if _, err := tcp(client.ns, "10.96.0.20:80"); err != nil {
		t.Fatalf("after endpoints appeared: %v", err)
	}
	// Deleting the Service removes it: its VIP is no longer special.
	e.proxier.DeleteService(svc("web", "10.96.0.21"))
	e.sync()
	if _, err := tcp(client.ns, "10.96.0.21:80"); err == nil {
		t.Fatal("deleted Service still answers")
	}
}

// NodePort from the outside host: policy Cluster masquerades and may go to
// any endpoint; policy Local keeps the client address, uses local endpoints
// only, drops without one, and its health-check port says so.
func TestNodePortClusterAndLocal(t *testing.T) {
	e := newEnv(t, "")
	a, b := e.addPod("a"), e.addPod("b")
	e.proxier.UpdateService(svc("np", "10.96.0.30", nodePort(30080, 30081)))
	e.proxier.UpdateSlice(slice("np", readyOn(a, "node-1"), readyOn(b, "node-2")))
	e.proxier.UpdateService(svc("local", "10.96.0.31", nodePort(30090, 30091), externalLocal(32000)))
	e.proxier.UpdateSlice(slice("local", readyOn(a, "node-1"), readyOn(b, "node-2")))
	e.serve(svc("remote", "10.96.0.32", nodePort(30100, 30101), externalLocal(32001)), readyOn(b, "node-2"))

	seen := spread(t, e.outside, hostPort(nodeUplinkIP, 30080), 30)
	if len(seen) != 2 {
		t.Errorf("NodePort (Cluster) reached %v, want both endpoints", seen)
	}
	r, _ := tcp(e.outside, hostPort(nodeUplinkIP, 30080))
	if seenClient(r) == outsideIP {
		t.Errorf("policy Cluster: backend saw the outside client %s, want a masqueraded address", outsideIP)
	}
	if r, err := probe.UDPRequest(e.outside, hostPort(nodeUplinkIP, 30081), "x"); err != nil || r == "" {
		t.Errorf("UDP NodePort: %q, %v", r, err)
	}

	seen = spread(t, e.outside, hostPort(nodeUplinkIP, 30090), 20)
	if seen["a"] != 20 {
		t.Errorf("policy Local reached %v, want only the local endpoint a", seen)
	}
	r, _ = tcp(e.outside, hostPort(nodeUplinkIP, 30090))
	if seenClient(r) != outsideIP {
		t.Errorf("policy Local: backend saw %q, want the client's own %s", r, outsideIP)
	}
	dropped(t, e.outside, hostPort(nodeUplinkIP, 30100))
	// Pods still reach a Local Service through its ClusterIP on any node.
	client := e.addPod("client")
	if r, err := tcp(client.ns, "10.96.0.32:80"); err != nil || backendOf(r) != "b" {
		t.Errorf("ClusterIP of a Local service without local endpoints: %q, %v", r, err)
	}
	for port, want := range map[string]int{"32000": http.StatusOK, "32001": http.StatusServiceUnavailable} {
		code := healthCode(t, e.outside, nodeUplinkIP+":"+port)
		if code != want {
			t.Errorf("health-check node port %s: %d, want %d", port, code, want)
		}
	}
}

func healthCode(t *testing.T, nsPath, addr string) int {
	t.Helper()
	c, err := probe.Dial(nsPath, "tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("health check %s: %v", addr, err)
	}
	defer c.Close()
	_, err = probe.Request(c, addr, "/")
	if err == nil {
		return http.StatusOK
	}
	if strings.Contains(err.Error(), "status 503") {
		return http.StatusServiceUnavailable
	}
	t.Fatalf("health check %s: %v", addr, err)
	return 0
}

// externalIPs and load-balancer IPs with loadBalancerSourceRanges.
func TestExternalIPsAndSourceRanges(t *testing.T) {
	e := newEnv(t, "")
	a := e.addPod("a")
	e.proxier.UpdateService(svc("ext", "10.96.0.40", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"203.0.113.10"} }))
	e.proxier.UpdateSlice(slice("ext", readyOn(a, "node-1")))
	e.proxier.UpdateService(svc("lb", "10.96.0.41", nodePort(30200, 30201), func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.20"}}
		s.Spec.LoadBalancerSourceRanges = []string{outsideIP + "/32"}
	}))
	e.proxier.UpdateSlice(slice("lb", readyOn(a, "node-1")))
	e.proxier.UpdateService(svc("lb-closed", "10.96.0.42", nodePort(30210, 30211), func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.21"}}
		s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
	}))
	e.proxier.UpdateSlice(slice("lb-closed", readyOn(a, "node-1")))
	e.sync()
	if r, err := tcp(e.outside, "203.0.113.10:80"); err != nil || backendOf(r) != "a" {
		t.Fatalf("externalIP: %q, %v", r, err)
	}
	if r, err := tcp(e.outside, "203.0.113.20:80"); err != nil || backendOf(r) != "a" {
		t.Fatalf("LB IP from an allowed source: %q, %v", r, err)
	}
	dropped(t, e.outside, "203.0.113.21:80")
}

// Session affinity ClientIP sticks to one endpoint for its timeout, then
// lets go.
func TestSessionAffinity(t *testing.T) {
	e := newEnv(t, "")
	a, b, c, client := e.addPod("a"), e.addPod("b"), e.addPod("c"), e.addPod("client")
	e.serve(svc("sticky", "10.96.0.50", affinity(2)), readyOn(a, "node-1"), readyOn(b, "node-1"), readyOn(c, "node-1"))
	seen := spread(t, client.ns, "10.96.0.50:80", 20)
	if len(seen) != 1 {
		t.Fatalf("affinity: 20 connections went to %v, want one backend", seen)
	}
	// After the timeout the client is balanced again (each round is a fresh pick).
	backends := map[string]bool{}
	for range 8 {
		time.Sleep(2100 * time.Millisecond)
		r, err := tcp(client.ns, "10.96.0.50:80")
		if err != nil {
			t.Fatal(err)
		}
		backends[backendOf(r)] = true
		if len(backends) > 1 {
			return
		}
	}
	t.Fatalf("after 8 affinity timeouts the client still only reached %v", backends)
}

// A pod reaching itself through its Service (hairpin) works.
func TestHairpin(t *testing.T) {
	e := newEnv(t, "")
	a := e.addPod("a")
	e.serve(svc("self", "10.96.0.60"), readyOn(a, "node-1"))
	if r, err := tcp(a.ns, "10.96.0.60:80"); err != nil || backendOf(r) != "a" {
		t.Fatalf("hairpin: %q, %v", r, err)
	}
}

// Without ready endpoints, serving terminating ones still get traffic; not
// serving ones do not. internalTrafficPolicy Local without a local endpoint
// drops.
func TestTerminatingFallbackAndInternalLocal(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	e.proxier.UpdateService(svc("term", "10.96.0.70"))
	e.proxier.UpdateSlice(slice("term",
		ep{p: a, node: "node-1", ready: false, serving: true, terminating: true},
		ep{p: b, node: "node-1", ready: false, serving: false, terminating: true}))
	e.serve(svc("itp", "10.96.0.71", internalLocal), readyOn(b, "node-2"))
	seen := spread(t, client.ns, "10.96.0.70:80", 10)
	if seen["a"] != 10 {
		t.Fatalf("terminating fallback reached %v, want only the serving endpoint a", seen)
	}
	dropped(t, client.ns, "10.96.0.71:80")
	e.proxier.UpdateSlice(slice("term", ep{p: a, node: "node-1", terminating: true}))
	e.sync()
	refused(t, client.ns, "10.96.0.70:80")
}

// trafficDistribution: endpoints hinted for this node's zone get the traffic.
func TestTopologyHints(t *testing.T) {
	e := newEnv(t, "zone-a")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	e.proxier.UpdateService(svc("near", "10.96.0.80", func(s *corev1.Service) { s.Spec.TrafficDistribution = ptr.To("PreferClose") }))
	e.proxier.UpdateSlice(slice("near", ep{p: a, node: "node-1", ready: true, serving: true, zone: "zone-a"},
		ep{p: b, node: "node-2", ready: true, serving: true, zone: "zone-b"}))
	e.sync()
	if seen := spread(t, client.ns, "10.96.0.80:80", 10); seen["a"] != 10 {
		t.Fatalf("zone-a client reached %v, want only the zone-a endpoint", seen)
	}
}

// A UDP client keeps working when its backend is replaced: the stale
// conntrack entry pointing at the old backend is cleared.
func TestUDPConntrackClearedOnEndpointChange(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	e.serve(svc("dns", "10.96.0.90"), readyOn(a, "node-1"))
	ask := udpSocket(t, client.ns, "10.96.0.90:81")
	if got := ask(); got != "a" {
		t.Fatalf("first answer from %q, want a", got)
	}
	e.proxier.UpdateSlice(slice("dns", readyOn(b, "node-1"))) // a replaced by b (a still runs)
	e.sync()
	if got := ask(); got != "b" {
		t.Fatalf("same socket after the endpoint change answered by %q, want b", got)
	}
}

// A change of a Service's port is applied: the old port is rejected, the new
// one works.
func TestServicePortChange(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	e.serve(svc("move", "10.96.0.100"), readyOn(a, "node-1"))
	e.proxier.UpdateService(svc("move", "10.96.0.100", func(s *corev1.Service) { s.Spec.Ports[0].Port = 8000 }))
	e.sync()
	refused(t, client.ns, "10.96.0.100:80")
	if _, err := tcp(client.ns, "10.96.0.100:8000"); err != nil {
		t.Fatalf("new port: %v", err)
	}
	// The table survives the proxier: nothing is flushed on close.
	e.proxier.Close()
	if _, err := tcp(client.ns, "10.96.0.100:8000"); err != nil {
		t.Fatalf("after the proxier stopped: %v", err)
	}
	_ = netns.Path
}
