package ipam

import (
	"errors"
	"fmt"
	"net/netip"
)

// Range is one contiguous block of allocatable addresses inside a subnet.
// The zero Start, End and Gateway are filled in by Canonicalize.
type Range struct {
	Subnet  netip.Prefix
	Start   netip.Addr // first address that may be handed out
	End     netip.Addr // last address that may be handed out
	Gateway netip.Addr // never handed out; the pod's default gateway
}

// RangeSet is a list of ranges of one address family; an attachment gets
// exactly one address from each RangeSet (one per family for dual-stack).
type RangeSet []Range

// Canonicalize masks the subnet, fills in defaults and validates the range:
// Start defaults to the first usable address after the gateway's slot,
// End to the last usable address, Gateway to the first usable address.
func (r *Range) Canonicalize() error {
	if !r.Subnet.IsValid() {
		return errors.New("subnet is missing or not a valid CIDR")
	}
	r.Subnet = r.Subnet.Masked()
	first, last, ok := usableBounds(r.Subnet)
	if !ok {
		return fmt.Errorf("subnet %s has no usable addresses", r.Subnet)
	}
	if !r.Gateway.IsValid() {
		r.Gateway = first
	} else if !r.Subnet.Contains(r.Gateway) {
		return fmt.Errorf("gateway %s is outside subnet %s", r.Gateway, r.Subnet)
	}
	if !r.Start.IsValid() {
		r.Start = first
	} else if !r.Subnet.Contains(r.Start) {
		return fmt.Errorf("rangeStart %s is outside subnet %s", r.Start, r.Subnet)
	}
	if !r.End.IsValid() {
		r.End = last
	} else if !r.Subnet.Contains(r.End) {
		return fmt.Errorf("rangeEnd %s is outside subnet %s", r.End, r.Subnet)
	}
	if r.Start.Less(first) || last.Less(r.End) {
		return fmt.Errorf("range %s-%s includes the network or broadcast address of %s", r.Start, r.End, r.Subnet)
	}
	if r.End.Less(r.Start) {
		return fmt.Errorf("rangeStart %s is after rangeEnd %s", r.Start, r.End)
	}
	return nil
}

// Contains reports whether addr lies between Start and End.
func (r *Range) Contains(addr netip.Addr) bool {
	return r.Subnet.Contains(addr) && !addr.Less(r.Start) && !r.End.Less(addr)
}

func (r *Range) String() string {
	return fmt.Sprintf("%s (%s-%s)", r.Subnet, r.Start, r.End)
}

// usableBounds returns the first and last host address of a subnet: for IPv4
// the network and broadcast addresses are excluded, for IPv6 the
// subnet-router anycast address (the all-zero host) is.
func usableBounds(p netip.Prefix) (first, last netip.Addr, ok bool) {
	network := p.Addr()
	bits := network.BitLen() - p.Bits()
	if network.Is4() && bits < 2 || network.Is6() && bits < 1 {
		return netip.Addr{}, netip.Addr{}, false
	}
	last = lastAddr(p)
	if network.Is4() {
		last = last.Prev()
	}
	return network.Next(), last, true
}

// lastAddr is the highest address of a prefix (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Canonicalize validates each range, checks that the ranges of a set are of one
// family and that no two ranges anywhere overlap.
func Canonicalize(sets []RangeSet) error {
	var all []*Range
	for i := range sets {
		if len(sets[i]) == 0 {
			return fmt.Errorf("range set %d is empty", i)
		}
		for j := range sets[i] {
			r := &sets[i][j]
			if err := r.Canonicalize(); err != nil {
				return fmt.Errorf("range set %d, range %d: %w", i, j, err)
			}
			if r.Subnet.Addr().Is4() != sets[i][0].Subnet.Addr().Is4() {
				return fmt.Errorf("range set %d mixes IPv4 and IPv6", i)
			}
			for _, o := range all {
				if o.Subnet.Addr().Is4() == r.Subnet.Addr().Is4() && !(r.End.Less(o.Start) || o.End.Less(r.Start)) {
					return fmt.Errorf("range %s overlaps range %s", r, o)
				}
			}
			all = append(all, r)
		}
	}
	return nil
}
