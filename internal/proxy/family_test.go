package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// A dual-stack Service is programmed by both proxiers, each with the
// ClusterIP, endpoints and external IPs of its own family only; a
// single-stack Service only by its family's proxier.
func TestDualStackOneProxierPerFamily(t *testing.T) {
	web := service("web", "10.96.0.10", corev1.ServicePort{Port: 80})
	web.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
	web.Spec.Type = corev1.ServiceTypeNodePort
	web.Spec.Ports[0].NodePort = 30080
	web.Spec.ExternalIPs = []string{"192.0.2.10", "2001:db8::10"}
	v4 := slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1"))
	v6 := slice("web", 8080, corev1.ProtocolTCP, ready("fd00:244:0:1::2", "node-1"))
	v6.Name, v6.AddressType = "web-v6", discoveryv1.AddressTypeIPv6
	only4 := service("legacy", "10.96.0.11", corev1.ServicePort{Port: 81})
	only4Slice := slice("legacy", 8081, corev1.ProtocolTCP, ready("10.244.1.3", "node-1"))

	dump := func(fam Family, cidr string) string {
		fake := nft.NewFake(fam, Table)
		p := New(Config{Family: fam, NodeName: "node-1", ClusterCIDR: netip.MustParsePrefix(cidr)}, fake, &recordingConntrack{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		t.Cleanup(p.Close)
		for _, s := range []*corev1.Service{web, only4} {
			p.UpdateService(s)
		}
		for _, s := range []*discoveryv1.EndpointSlice{v4, v6, only4Slice} {
			p.UpdateSlice(s)
		}
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		return fake.Dump()
	}
	d4, d6 := dump(IPv4, "10.244.0.0/16"), dump(IPv6, "fd00:244::/48")
	for _, c := range []struct {
		name, dump string
		want, not  []string
	}{
		{"IPv4", d4,
			[]string{"add table ip flatnet-proxy", "10.96.0.10 . tcp . 80", "192.0.2.10 . tcp . 80", ": 10.244.1.2 . 8080", "dnat ip to ip daddr . meta l4proto . th dport map @endpoints-0", "10.96.0.11 . tcp . 81", "tcp . 30080", "ip saddr != 10.244.0.0/16"},
			[]string{"fd00", "2001:db8"}},
		{"IPv6", d6,
			[]string{"add table ip6 flatnet-proxy", "fd00:96::10 . tcp . 80", "2001:db8::10 . tcp . 80", ": fd00:244:0:1::2 . 8080", "dnat ip6 to ip6 daddr . meta l4proto . th dport map @endpoints-0", "tcp . 30080", "ip6 saddr != fd00:244::/48", "ip6 daddr != ::1"},
			[]string{"10.96.0.10", "10.244.1.2", "10.96.0.11", "192.0.2.10", " ip saddr", " ip daddr"}},
	} {
		for _, w := range c.want {
			if !strings.Contains(c.dump, w) {
				t.Errorf("%s table lacks %q:\n%s", c.name, w, c.dump)
			}
		}
		for _, n := range c.not {
			if strings.Contains(c.dump, n) {
				t.Errorf("%s table has %q (another family):\n%s", c.name, n, c.dump)
			}
		}
	}
}

// The IPv6 proxier takes no notice of IPv4-only Services and IPv4 slices (no
// sync is due, no programming-latency sample is taken), yet a dual-stack
// Service that becomes IPv4-only leaves its IPv6 table.
func TestOtherFamilyIgnored(t *testing.T) {
	fake := nft.NewFake(nft.IPv6, Table)
	p := New(Config{Family: IPv6, NodeName: "node-1", ClusterCIDR: netip.MustParsePrefix("fd00:244::/48")}, fake, &recordingConntrack{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(p.Close)
	ctx := context.Background()
	if err := p.Sync(ctx); err != nil { // the base table
		t.Fatal(err)
	}
	legacy := service("legacy", "10.96.0.11", corev1.ServicePort{Port: 81})
	p.UpdateService(legacy)
	p.UpdateSlice(slice("legacy", 8081, corev1.ProtocolTCP, ready("10.244.1.3", "node-1")))
	p.DeleteService(legacy)
	if !p.Status().PendingSince.IsZero() {
		t.Fatal("the IPv6 proxier counts an IPv4-only Service and slice as a change")
	}
	web := service("web", "10.96.0.10", corev1.ServicePort{Port: 80})
	web.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
	v6 := slice("web", 8080, corev1.ProtocolTCP, ready("fd00:244:0:1::2", "node-1"))
	v6.Name, v6.AddressType = "web-v6", discoveryv1.AddressTypeIPv6
	p.UpdateService(web)
	p.UpdateSlice(v6)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if d := fake.Dump(); !strings.Contains(d, "fd00:96::10 . tcp . 80") {
		t.Fatalf("dual-stack Service missing from the IPv6 table:\n%s", d)
	}
	single := web.DeepCopy()
	single.Spec.ClusterIPs = []string{"10.96.0.10"}
	p.UpdateService(single)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if d := fake.Dump(); strings.Contains(d, "fd00:96::10") {
		t.Fatalf("Service now IPv4-only still in the IPv6 table:\n%s", d)
	}
}
