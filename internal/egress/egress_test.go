package egress

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

func TestSyncRewritesAtomically(t *testing.T) {
	fake := nft.NewFake(nft.IPv4, Table)
	m := NewWith(fake, nft.IPv4)
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

// On a dual-stack node the IPv6 table carries the IPv6 cluster CIDR and
// IPv6 node addresses only.
func TestSyncIPv6(t *testing.T) {
	fake := nft.NewFake(nft.IPv6, Table)
	m := NewWith(fake, nft.IPv6)
	nodes := []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00:30::11")}
	if err := m.Sync(context.Background(), netip.MustParsePrefix("fd00:244::/56"), nodes); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	for _, want := range []string{"add table ip6 flatnet-egress", "ip6 saddr != fd00:244::/56 return", "ip6 daddr @nodes return", "fd00:30::11"} {
		if !strings.Contains(dump, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, dump)
		}
	}
	if strings.Contains(dump, "172.30.0.11") || strings.Contains(dump, " ip saddr") {
		t.Errorf("IPv4 in the IPv6 table:\n%s", dump)
	}
}

// Present is false until the first Sync and again once the table is
// deleted behind the Masquerader's back.
func TestPresent(t *testing.T) {
	fake := nft.NewFake(nft.IPv4, Table)
	m := NewWith(fake, nft.IPv4)
	ctx := context.Background()
	present := func() bool {
		t.Helper()
		ok, err := m.Present(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if present() {
		t.Fatal("present before the first sync")
	}
	if err := m.Sync(ctx, netip.MustParsePrefix("10.244.0.0/16"), nil); err != nil {
		t.Fatal(err)
	}
	if !present() {
		t.Fatal("not present after a sync")
	}
	tx := fake.NewTx()
	tx.Delete(&knftables.Table{})
	if err := fake.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if present() {
		t.Fatal("present after the table was deleted")
	}
}

// The engine writes the table once it has node addresses, rewrites it
// when they change, and restores it within a check interval when it is
// deleted behind its back.
func TestEngineKeepsTheTable(t *testing.T) {
	fake := nft.NewFake(nft.IPv4, Table)
	e := NewEngine(NewWith(fake, nft.IPv4), netip.MustParsePrefix("10.244.0.0/16"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Run(ctx)
	has := func(what string) func() bool {
		return func() bool { return strings.Contains(fake.Dump(), what) }
	}
	e.SetNodeIPs([]netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00:30::11")})
	waitFor(t, has("172.30.0.11"), "the node address in the table")
	e.SetNodeIPs([]netip.Addr{netip.MustParseAddr("172.30.0.12")})
	waitFor(t, func() bool { return has("172.30.0.12")() && !has("172.30.0.11")() }, "the new node address, the old gone")
	tx := fake.NewTx()
	tx.Delete(&knftables.Table{})
	if err := fake.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, has("masquerade"), "the deleted table restored")
}

func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not seen within 5 s: %s", what)
		}
	}
}
