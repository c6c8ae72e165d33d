package proxy

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

func TestFlowIndexMatch(t *testing.T) {
	vip, pod, node := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("172.30.0.11")
	idx := newFlowIndex([]Flow{
		{Protocol: unix.IPPROTO_TCP, Dst: vip, Port: 80, NotNATed: true},
		{Protocol: unix.IPPROTO_UDP, Dst: vip, Port: 53, ReplySrc: pod},
		{Protocol: unix.IPPROTO_UDP, Port: 30053},
	})
	for _, tc := range []struct {
		name     string
		proto    uint8
		dst      netip.Addr
		port     uint16
		replySrc netip.Addr
		want     bool
	}{
		{"TCP to the VIP, never NATed", unix.IPPROTO_TCP, vip, 80, vip, true},
		{"TCP to the VIP, NATed to a pod: a live connection", unix.IPPROTO_TCP, vip, 80, pod, false},
		{"UDP answered by the removed endpoint", unix.IPPROTO_UDP, vip, 53, pod, true},
		{"UDP answered by another endpoint", unix.IPPROTO_UDP, vip, 53, netip.MustParseAddr("10.244.2.2"), false},
		{"UDP NodePort on any node address", unix.IPPROTO_UDP, node, 30053, pod, true},
		{"other port", unix.IPPROTO_TCP, vip, 81, vip, false},
		{"other protocol", unix.IPPROTO_UDP, vip, 80, vip, false},
	} {
		if got := idx.match(tc.proto, tc.dst, tc.port, tc.replySrc); got != tc.want {
			t.Errorf("%s: match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The flows a sync asks to delete: a Service port that gets its first
// endpoint clears every UDP entry and the TCP entries that were never
// NATed; a removed UDP endpoint clears what it answered; a deleted UDP
// Service clears all of its flows; an unchanged Service clears nothing.
func TestStaleFlowsPerChange(t *testing.T) {
	p, _, ct := newFakeProxier(t)
	sync := func() []string {
		t.Helper()
		ct.cleared = nil
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		slices.Sort(ct.cleared)
		return ct.cleared
	}
	web := service("web", "10.96.0.10", corev1.ServicePort{Port: 80})
	dns := service("dns", "10.96.0.53", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP})
	p.UpdateService(web)
	p.UpdateService(dns)
	if got := sync(); len(got) != 0 {
		t.Fatalf("Services without endpoints cleared %v", got)
	}
	p.UpdateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1")))
	p.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.3", "node-1")))
	want := []string{"tcp 10.96.0.10:80 not NATed", "udp 10.96.0.53:53"}
	if got := sync(); !slices.Equal(got, want) {
		t.Fatalf("0 -> 1 endpoints cleared %v, want %v", got, want)
	}
	if got := sync(); len(got) != 0 {
		t.Fatalf("a sync without changes cleared %v", got)
	}
	p.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.4", "node-1")))
	if got := sync(); !slices.Equal(got, []string{"udp 10.96.0.53:53 answered by 10.244.1.3"}) {
		t.Fatalf("endpoint replaced: cleared %v", got)
	}
	p.DeleteService(dns)
	p.DeleteService(web)
	if got := sync(); !slices.Equal(got, []string{"udp 10.96.0.53:53"}) {
		t.Fatalf("Services deleted: cleared %v", got)
	}
}
