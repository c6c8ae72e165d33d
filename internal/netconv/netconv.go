// Package netconv converts between the net/netip types the project uses and
// the net types that netlink and the CNI types speak.
package netconv

import (
	"net"
	"net/netip"
)

// IPNet is p as a *net.IPNet (address kept, not masked).
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix is n as a netip.Prefix; IPv4-mapped addresses become IPv4.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
