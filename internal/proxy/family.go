package proxy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/knftables"
)

// Family is the IP family one Proxier programs. A dual-stack node runs two
// Proxiers, one per family, each with its own table ("ip flatnet-proxy" and
// "ip6 flatnet-proxy"), as kube-proxy runs one proxier per family: a
// Service's ClusterIP of each family, its EndpointSlices of that address
// type, and the external IPs of that family go to that family's table.
type Family int

const (
	IPv4 Family = iota
	IPv6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// NFTFamily is the nftables family of the proxy's table.
func (f Family) NFTFamily() knftables.Family {
	if f == IPv6 {
		return knftables.IPv6Family
	}
	return knftables.IPv4Family
}

// FamilyOf is the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is6() {
		return IPv6
	}
	return IPv4
}

func (f Family) has(a netip.Addr) bool { return a.IsValid() && FamilyOf(a) == f }

// ip is the nftables payload keyword: "ip saddr" or "ip6 saddr".
func (f Family) ip() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

func (f Family) addrType() string {
	if f == IPv6 {
		return "ipv6_addr"
	}
	return "ipv4_addr"
}

// loopback is the range NodePorts are never served on.
func (f Family) loopback() string {
	if f == IPv6 {
		return "::1"
	}
	return "127.0.0.0/8"
}

func (f Family) addressType() discoveryv1.AddressType {
	if f == IPv6 {
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}

func (f Family) ipFamily() corev1.IPFamily {
	if f == IPv6 {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}
