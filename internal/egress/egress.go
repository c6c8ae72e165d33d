// Package egress masquerades pod traffic that leaves the cluster: a packet
// from a pod to an address outside the cluster CIDR and outside the node
// addresses gets the node's address as its source, so the world beyond the
// cluster can answer. Pod to pod and pod to node keep the pod's own address.
//
// Design notes (kernel state): one nftables table per IP family in use,
// "ip flatnet-egress" (and "ip6 flatnet-egress" on a dual-stack node), owned
// by this package and by nothing else, each holding a set "nodes" (every node's
// InternalIP) and a NAT postrouting chain:
//
//	ip saddr != <cluster CIDR> return
//	ip daddr <cluster CIDR> return
//	ip daddr @nodes return
//	masquerade
//
// Each Sync rewrites the chain and the set in one atomic transaction
// (through package nft, the layer the proxy uses too), so there is never a
// moment without masquerading; the table is left in place on exit. The
// agent checks every second that the table is still there (Present) and
// rewrites it at once when it is not.
package egress

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// Table is the nftables table of this package.
const Table = "flatnet-egress"

// Masquerader keeps the egress table of one IP family in sync.
type Masquerader struct {
	nft nft.Tables
	fam nft.Family
}

// New returns a Masquerader for the family of clusterCIDR over the node's
// nftables (package nft).
func New(clusterCIDR netip.Prefix) (*Masquerader, error) {
	fam := nft.FamilyOf(clusterCIDR.Addr())
	tables, err := nft.New(fam, Table)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return NewWith(tables, fam), nil
}

// NewWith uses the given tables (nft.NewFake in tests), made for
// family fam.
func NewWith(tables nft.Tables, fam nft.Family) *Masquerader {
	return &Masquerader{nft: tables, fam: fam}
}

// Present reports whether the table and its chain are in the kernel, a
// cheap check (a netlink listing) the agent makes every second: `nft flush
// ruleset` or a distribution's nftables service restarting deletes the
// table behind its back, and it is rewritten at once instead of at the
// next resync.
func (m *Masquerader) Present(ctx context.Context) (bool, error) {
	chains, err := m.nft.List(ctx, "chains")
	if nft.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list %s: %w", Table, err)
	}
	return slices.Contains(chains, "postrouting"), nil
}

// Sync programs the rules for clusterCIDR (of the Masquerader's family) and
// the node addresses of that family.
func (m *Masquerader) Sync(ctx context.Context, clusterCIDR netip.Prefix, nodeIPs []netip.Addr) error {
	ip, addrType := m.fam.IP(), m.fam.AddrType()
	tx := m.nft.NewTx()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("flatnet: masquerade pod egress")})
	tx.Add(&knftables.Set{Name: "nodes", Type: addrType, Comment: knftables.PtrTo("InternalIPs of all nodes: never masqueraded")})
	tx.Flush(&knftables.Set{Name: "nodes"})
	ips := slices.Clone(nodeIPs)
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	for _, a := range slices.Compact(ips) {
		if m.fam.Has(a) {
			tx.Add(&knftables.Element{Set: "nodes", Key: []string{a.String()}})
		}
	}
	chain := "postrouting"
	tx.Add(&knftables.Chain{Name: chain, Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)})
	tx.Flush(&knftables.Chain{Name: chain})
	cidr := clusterCIDR.Masked().String()
	for _, r := range []string{
		ip + " saddr != " + cidr + " return",
		ip + " daddr " + cidr + " return",
		ip + " daddr @nodes return",
		"masquerade",
	} {
		tx.Add(&knftables.Rule{Chain: chain, Rule: r})
	}
	if err := m.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("program %s: %w", Table, err)
	}
	return nil
}
