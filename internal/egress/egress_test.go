package egress

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

func TestSyncRewritesAtomically(t *testing.T) {
	fake := knftables.NewFake(knftables.IPv4Family, Table)
	m := NewWith(fake)
	cidr := netip.MustParsePrefix("10.244.0.0/16")
	if err := m.Sync(context.Background(), cidr, []netip.Addr{netip.MustParseAddr("172.30.0.12"), netip.MustParseAddr("172.30.0.11")}); err != nil {
		t.Fatal(err)
	}
	if err := m.Sync(context.Background(), cidr, []netip.Addr{netip.MustParseAddr("172.30.0.11")}); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	for _, want := range []string{"ip saddr != 10.244.0.0/16 return", "ip daddr 10.244.0.0/16 return", "ip daddr @nodes return", "masquerade", "elements = { 172.30.0.11 }"} {
		if !strings.Contains(dump, want) && !strings.Contains(dump, strings.ReplaceAll(want, "elements = { ", "")) {
			t.Errorf("ruleset lacks %q:\n%s", want, dump)
		}
	}
	if strings.Contains(dump, "172.30.0.12") {
		t.Errorf("a removed node is still exempt:\n%s", dump)
	}
	if n := strings.Count(dump, "postrouting masquerade\n"); n != 1 {
		t.Errorf("%d masquerade rules after two syncs, want 1:\n%s", n, dump)
	}
}
