package proxy

import (
	"net/netip"
	"slices"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// refs counts, over the programmed Service ports, the users of what ports
// share: ClusterIPs (the cluster-ips set), hairpin endpoints (the hairpin
// set) and the shared chains and maps of balance.go, and the rules,
// elements and chains of the ports for the metrics. A partial sync then
// finds what its change leaves unused, and keeps the metrics, in time
// proportional to the change, not to the number of Services.
type refs struct {
	vips    map[netip.Addr]int
	hairpin map[netip.Addr]int
	shared  map[string]int
	rules   int
	elems   int
	chains  int
}

// newRefs counts every programmed port.
func newRefs(programmed map[ServicePortName]*portObjects) *refs {
	r := &refs{vips: map[netip.Addr]int{}, hairpin: map[netip.Addr]int{}, shared: map[string]int{}}
	for _, o := range programmed {
		r.add(o, 1)
	}
	return r
}

// add counts o's uses d times (1: programmed, -1: taken out).
func (r *refs) add(o *portObjects, d int) {
	r.vips[o.sp.ClusterIP] += d
	for _, ip := range dedup(o.hairpin) {
		r.hairpin[ip] += d
	}
	for _, name := range dedup(o.shared) {
		r.shared[name] += d
	}
	r.rules += d * o.rules
	r.elems += d * len(o.elements)
	r.chains += d * len(o.chains)
}

func dedup[T comparable](list []T) []T {
	seen := make(map[T]bool, len(list))
	return slices.DeleteFunc(slices.Clone(list), func(v T) bool {
		if seen[v] {
			return true
		}
		seen[v] = true
		return false
	})
}

// change is what replacing the stale ports with updates does to r: a
// copy of the counts of only what the change touches, with it applied.
func (r *refs) change(stale, updates map[ServicePortName]*portObjects) *refs {
	c := &refs{vips: map[netip.Addr]int{}, hairpin: map[netip.Addr]int{}, shared: map[string]int{}, rules: r.rules, elems: r.elems, chains: r.chains}
	touch := func(o *portObjects) {
		c.vips[o.sp.ClusterIP] = r.vips[o.sp.ClusterIP]
		for _, ip := range o.hairpin {
			c.hairpin[ip] = r.hairpin[ip]
		}
		for _, name := range o.shared {
			c.shared[name] = r.shared[name]
		}
	}
	for _, o := range stale {
		touch(o)
	}
	for _, o := range updates {
		touch(o)
	}
	for _, o := range stale {
		c.add(o, -1)
	}
	for _, o := range updates {
		c.add(o, 1)
	}
	return c
}

// apply makes the counts of change c (from r.change) r's own.
func (r *refs) apply(c *refs) {
	for k, n := range c.vips {
		setCount(r.vips, k, n)
	}
	for k, n := range c.hairpin {
		setCount(r.hairpin, k, n)
	}
	for k, n := range c.shared {
		setCount(r.shared, k, n)
	}
	r.rules, r.elems, r.chains = c.rules, c.elems, c.chains
}

func setCount[K comparable](m map[K]int, k K, n int) {
	if n <= 0 {
		delete(m, k)
	} else {
		m[k] = n
	}
}

// deleteUnused deletes, in tx, the ClusterIPs, hairpin pairs and shared
// chains and maps that change c leaves without users (and forgets the
// shared ones in shared), so that a partial sync leaves the table a full
// sync would write. Shared objects go in tiers, each before what it points
// to; their users' map elements are deleted earlier in the transaction.
func (c *refs) deleteUnused(tx *nft.Tx, shared map[string]sharedObject) {
	for ip, n := range c.vips {
		if n <= 0 {
			tx.Delete(&knftables.Element{Set: clusterIPsSet, Key: []string{ip.String()}})
		}
	}
	for ip, n := range c.hairpin {
		if n <= 0 {
			tx.Delete(&knftables.Element{Set: hairpinSet, Key: []string{ip.String(), ip.String()}})
		}
	}
	var unused []string
	for name, n := range c.shared {
		if _, ok := shared[name]; ok && n <= 0 {
			unused = append(unused, name)
		}
	}
	slices.SortFunc(unused, func(a, b string) int { return shared[a].tier - shared[b].tier })
	for _, name := range unused {
		if shared[name].tier == tierMap {
			tx.Delete(&knftables.Map{Name: name})
		} else {
			tx.Delete(&knftables.Chain{Name: name})
		}
		delete(shared, name)
	}
}
