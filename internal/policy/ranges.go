package policy

import (
	"net/netip"
	"slices"
	"strconv"
)

// AddrRange is the addresses from First to Last, both included, of one
// family.
type AddrRange struct{ First, Last netip.Addr }

// rangeOf is the range of prefix p.
func rangeOf(p netip.Prefix) AddrRange {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	return AddrRange{p.Addr(), last}
}

// single is the range of one address.
func single(a netip.Addr) AddrRange { return AddrRange{a, a} }

// everything is the range of every address of a's family.
func everything(a netip.Addr) AddrRange { return rangeOf(netip.PrefixFrom(a, 0)) }

// String writes r as an element field of an interval set: an address, a
// prefix when r is exactly one, or "first-last".
func (r AddrRange) String() string {
	if r.First == r.Last {
		return r.First.String()
	}
	// a prefix of h host bits starts with h zero bits and ends with h ones
	h := min(trailing(r.First.AsSlice(), 0), trailing(r.Last.AsSlice(), 1))
	if p := netip.PrefixFrom(r.First, r.First.BitLen()-h); rangeOf(p).Last == r.Last {
		return p.String()
	}
	return r.First.String() + "-" + r.Last.String()
}

// trailing counts the trailing bits of b equal to bit.
func trailing(b []byte, bit byte) int {
	n := 0
	for i := len(b)*8 - 1; i >= 0 && (b[i/8]>>(7-i%8))&1 == bit; i-- {
		n++
	}
	return n
}

// addrSet is a set of addresses as ranges, sorted, disjoint and not
// adjacent (merged): two equal sets have equal slices.
type addrSet []AddrRange

// union merges ranges (in any order, overlapping or not) into an addrSet.
func union(rs ...AddrRange) addrSet {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b AddrRange) int { return a.First.Compare(b.First) })
	var out addrSet
	for _, r := range rs {
		if n := len(out); n > 0 && touches(out[n-1], r) {
			if r.Last.Compare(out[n-1].Last) > 0 {
				out[n-1].Last = r.Last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// touches reports whether r, starting at or after a's start, overlaps a or
// follows it directly.
func touches(a, r AddrRange) bool {
	next := a.Last.Next()
	return !next.IsValid() || r.First.Compare(next) <= 0
}

// minus is s without the addresses of cut.
func (s addrSet) minus(cut AddrRange) addrSet {
	var out addrSet
	for _, r := range s {
		if cut.Last.Less(r.First) || r.Last.Less(cut.First) {
			out = append(out, r)
			continue
		}
		if r.First.Less(cut.First) {
			out = append(out, AddrRange{r.First, cut.First.Prev()})
		}
		if cut.Last.Less(r.Last) {
			out = append(out, AddrRange{cut.Last.Next(), r.Last})
		}
	}
	return out
}

// contains reports whether a is in s.
func (s addrSet) contains(a netip.Addr) bool {
	for _, r := range s {
		if r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0 {
			return true
		}
	}
	return false
}

// PortRange is the ports from First to Last, both included.
type PortRange struct{ First, Last uint16 }

// allPorts is every port of a protocol.
var allPorts = PortRange{0, 65535}

func (p PortRange) String() string {
	if p.First == p.Last {
		return strconv.Itoa(int(p.First))
	}
	return strconv.Itoa(int(p.First)) + "-" + strconv.Itoa(int(p.Last))
}

// PortPeers is a range of ports and the peers allowed on all of them.
type PortPeers struct {
	Ports PortRange
	Peers addrSet
}

// portGrant is one rule's grant to one pod: peers on a range of ports.
type portGrant struct {
	ports PortRange
	peers []AddrRange
}

// disjoint turns grants, which may overlap in ports and peers, into port
// ranges that do not overlap, each with the union of the peers of the
// grants covering it (the kernel refuses overlapping elements of an
// interval set); neighbouring ranges with the same peers are merged.
func disjoint(grants []portGrant) []PortPeers {
	var cuts []uint32 // where the set of covering grants may change
	for _, g := range grants {
		cuts = append(cuts, uint32(g.ports.First), uint32(g.ports.Last)+1)
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	var out []PortPeers
	for i := 0; i+1 < len(cuts); i++ {
		span := PortRange{uint16(cuts[i]), uint16(cuts[i+1] - 1)}
		var peers []AddrRange
		for _, g := range grants {
			if g.ports.First <= span.First && span.Last <= g.ports.Last {
				peers = append(peers, g.peers...)
			}
		}
		if len(peers) == 0 {
			continue
		}
		set := union(peers...)
		if n := len(out); n > 0 && out[n-1].Ports.Last+1 == span.First && slices.Equal(out[n-1].Peers, set) {
			out[n-1].Ports.Last = span.Last
			continue
		}
		out = append(out, PortPeers{span, set})
	}
	return out
}

func sortAddrs(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
