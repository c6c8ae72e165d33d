package proxy_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flatnet-io/flatnet/internal/probe"
)

// Deleting a Service clears its UDP conntrack entries: a socket that talked
// to it reaches the new backend when the Service comes back with another.
func TestUDPConntrackClearedOnServiceDeletion(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	e.proxier.UpdateService(svc("gone", "10.96.0.110"))
	e.proxier.UpdateSlice(slice("gone", readyOn(a, "node-1")))
	e.sync()
	ask := udpSocket(t, client.ns, "10.96.0.110:81")
	if got := ask(); got != "a" {
		t.Fatalf("first answer from %q", got)
	}
	e.proxier.DeleteService(svc("gone", "10.96.0.110"))
	e.sync()
	if got := ask(); got != "" { // a stale entry would still carry the flow to a
		t.Fatalf("after the Service was deleted the socket still reached %q", got)
	}
	e.proxier.UpdateService(svc("gone", "10.96.0.110"))
	e.proxier.UpdateSlice(slice("gone", readyOn(b, "node-1")))
	e.sync()
	if got := ask(); got != "b" {
		t.Fatalf("after the Service was deleted and re-created on b, the socket reached %q", got)
	}
}

// Packets conntrack finds INVALID (here a TCP segment with SYN and FIN) are
// dropped at the node instead of being forwarded to a pod.
func TestInvalidPacketsDropped(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	e.proxier.UpdateService(svc("web", "10.96.0.120"))
	e.proxier.UpdateSlice(slice("web", readyOn(a, "node-1")))
	e.sync()
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
