package policy_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

var protoNumbers = map[corev1.Protocol]uint8{corev1.ProtocolTCP: unix.IPPROTO_TCP, corev1.ProtocolUDP: unix.IPPROTO_UDP,
	corev1.ProtocolSCTP: unix.IPPROTO_SCTP, "ICMP": unix.IPPROTO_ICMP, "ICMPv6": unix.IPPROTO_ICMPV6}

func flowOf(p packet) policy.Flow {
	return policy.Flow{Proto: protoNumbers[p.proto], Src: p.src, Dst: p.dst, Port: uint16(p.port)}
}

// Model.Allows, which revocation judges established flows with, says
// what each judging node's table does with a connection's first packet,
// for every case and probe.
func TestAllowsAgreesWithTheTables(t *testing.T) {
	all := probes()
	for _, c := range cases {
		w := newWorld(t, c.policies)
		cl := &policy.Cluster{Policies: c.policies, Pods: pods(), Namespaces: namespaces()}
		models := map[string]*policy.Model{}
		var diffs []string
		for _, p := range all {
			fam := nft.FamilyOf(p.src)
			for _, n := range judges(p.src, p.dst) {
				key := n + "/" + fam.String()
				if models[key] == nil {
					models[key] = policy.Compute(cl, n, fam)
				}
				want, err := trace(w.tables[key].Table, p)
				if err != nil {
					t.Fatal(err)
				}
				if got := models[key].Allows(flowOf(p.packet)); got != want {
					diffs = append(diffs, fmt.Sprintf("  on %s %s -> %s %s/%d: table %v, Allows %v", n, p.src, p.dst, p.proto, p.port, want, got))
				}
			}
		}
		if len(diffs) > 0 {
			t.Errorf("%s: %d differ:\n%s", c.name, len(diffs), strings.Join(diffs[:min(len(diffs), 25)], "\n"))
		}
	}
}

// fakeConntrack is a conntrack table of flows.
type fakeConntrack struct{ flows []policy.Flow }

func (f *fakeConntrack) Delete(_ nft.Family, denied func(policy.Flow) bool) (int, error) {
	n := len(f.flows)
	f.flows = slices.DeleteFunc(f.flows, denied)
	return n - len(f.flows), nil
}

// A change that takes an allowance away deletes the entries of the flows
// it denies, and only those: not the flows it still allows, not those of
// the node itself (never judged), nothing when a change only adds.
func TestRevocationDeletesDeniedFlows(t *testing.T) {
	a := netip.MustParseAddr("10.244.1.10")     // x/a on n1
	b := netip.MustParseAddr("10.244.2.11")     // x/b on n2
	ya := netip.MustParseAddr("10.244.2.13")    // y/a on n2
	node := netip.MustParseAddr("10.244.1.1")   // n1's gateway
	world := netip.MustParseAddr("192.168.1.5") // outside
	tcp80 := func(src, dst netip.Addr) policy.Flow {
		return policy.Flow{Proto: unix.IPPROTO_TCP, Src: src, Dst: dst, Port: 80}
	}
	ct := &fakeConntrack{}
	src := &mutableSource{&policy.Cluster{Pods: pods(), Namespaces: namespaces()}}
	e := policy.NewEngine(nft.IPv4, "n1", nft.NewFake(nft.IPv4, policy.Table), src, quiet)
	e.UseConntrack(ct, func() (map[netip.Addr]bool, error) { return map[netip.Addr]bool{node: true}, nil })
	sync := func() {
		t.Helper()
		if err := e.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	sync()
	all := []policy.Flow{tcp80(b, a), tcp80(ya, a), tcp80(node, a), tcp80(world, a), tcp80(a, world)}
	ct.flows = slices.Clone(all)
	fromY := np("x", "from-y", spec{PodSelector: labels("pod", "a"), Ingress: []in{{From: []peer{nsPeer(labels("ns", "y"))}}}})
	src.c.Policies = []*networkingv1.NetworkPolicy{fromY}
	sync()
	if want := []policy.Flow{tcp80(ya, a), tcp80(node, a), tcp80(a, world)}; !slices.Equal(ct.flows, want) {
		t.Errorf("after x/a admits y only: %v, want %v", ct.flows, want)
	}
	ct.flows = slices.Clone(all)
	src.c.Policies = []*networkingv1.NetworkPolicy{fromY, np("x", "all", spec{PodSelector: labels("pod", "a"), Ingress: []in{{}}})}
	sync()
	if !slices.Equal(ct.flows, all) {
		t.Errorf("a change that only adds deleted entries: %v", ct.flows)
	}
	fresh := policy.NewEngine(nft.IPv4, "n1", nft.NewFake(nft.IPv4, policy.Table), src, quiet)
	fresh.UseConntrack(ct, func() (map[netip.Addr]bool, error) { return map[netip.Addr]bool{node: true}, nil })
	src.c.Policies = []*networkingv1.NetworkPolicy{np("x", "deny", spec{PolicyTypes: bothTypes})}
	if err := fresh.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []policy.Flow{tcp80(node, a)}; !slices.Equal(ct.flows, want) {
		t.Errorf("a first sync under deny-all left %v, want %v", ct.flows, want)
	}
}
