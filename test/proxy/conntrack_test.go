package proxy_test

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// Deleting a Service clears its UDP conntrack entries: a socket that talked
// to it reaches the new backend when the Service comes back with another.
func TestUDPConntrackClearedOnServiceDeletion(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	e.serve(svc("gone", "10.96.0.110"), readyOn(a, "node-1"))
	ask := udpSocket(t, client.ns, "10.96.0.110:81")
	if got := ask(); got != "a" {
		t.Fatalf("first answer from %q", got)
	}
	e.proxier.DeleteService(svc("gone", "10.96.0.110"))
	e.sync()
	if got := ask(); got != "" { // a stale entry would still carry the flow to a
		t.Fatalf("after the Service was deleted the socket still reached %q", got)
	}
	e.serve(svc("gone", "10.96.0.110"), readyOn(b, "node-1"))
	if got := ask(); got != "b" {
		t.Fatalf("after the Service was deleted and re-created on b, the socket reached %q", got)
	}
}

// Packets conntrack finds INVALID (here a TCP segment with SYN and FIN) are
// dropped at the node instead of being forwarded to a pod.
func TestInvalidPacketsDropped(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	e.serve(svc("web", "10.96.0.120"), readyOn(a, "node-1"))
	sniffer, err := probe.SniffTCP(a.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer sniffer.Close()
	src, dst := netip.MustParseAddr(client.ip), netip.MustParseAddr(a.ip)
	if err := probe.SendTCPSegment(client.ns, src, dst, 40001, 8080, 0x02); err != nil { // plain SYN
		t.Fatal(err)
	}
	if !sniffer.Saw(40001, time.Second) {
		t.Fatal("a plain SYN from the client pod did not reach the backend pod (the probe does not work)")
	}
	if err := probe.SendTCPSegment(client.ns, src, dst, 40002, 8080, 0x03); err != nil { // SYN+FIN: INVALID
		t.Fatal(err)
	}
	if sniffer.Saw(40002, time.Second) {
		t.Fatal("a SYN+FIN segment (conntrack INVALID) was forwarded to the pod")
	}
}

// A client that sent a SYN to a ClusterIP before the proxy programmed it
// (the SYN left by the default route, unanswered) leaves a conntrack entry
// that was never NATed. Its next connection from the same source port must
// still reach an endpoint once the Service is programmed, not hit that
// entry and be rejected as a packet to an unknown port of the ClusterIP.
func TestEarlySYNDoesNotPoisonLaterConnections(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	const vip, port = "10.96.0.130:80", 40130
	dial := func(timeout time.Duration) (string, error) {
		var reply string
		err := netns.Do(client.ns, func() error {
			d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(client.ip), Port: port}}
			c, err := d.Dial("tcp", vip)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			b, err := io.ReadAll(c)
			reply = string(b)
			return err
		})
		return reply, err
	}
	e.sync() // the proxy runs (its table exists) but has not seen the Service yet
	if _, err := dial(200 * time.Millisecond); err == nil {
		t.Fatal("connected to a ClusterIP no proxy had programmed")
	}
	e.serve(svc("late", "10.96.0.130"), readyOn(a, "node-1"))
	reply, err := dial(2 * time.Second)
	if err != nil || backendOf(reply) != "a" {
		t.Fatalf("from the port of the early SYN, after the Service was programmed: reply %q, %v", reply, err)
	}
}
