package proxy

import (
	"net/netip"

	gnftables "github.com/google/nftables"
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

// familyWords is how nftables and the Kubernetes API name a family.
type familyWords struct {
	name        string
	nft         knftables.Family
	netlink     gnftables.TableFamily
	ip          string // payload keyword: "ip saddr" or "ip6 saddr"
	addrType    string // set and map key type
	loopback    string // the range NodePorts are never served on
	addressType discoveryv1.AddressType
}

var families = [...]familyWords{
	IPv4: {"IPv4", knftables.IPv4Family, gnftables.TableFamilyIPv4, "ip", "ipv4_addr", "127.0.0.0/8", discoveryv1.AddressTypeIPv4},
	IPv6: {"IPv6", knftables.IPv6Family, gnftables.TableFamilyIPv6, "ip6", "ipv6_addr", "::1", discoveryv1.AddressTypeIPv6},
}

func (f Family) String() string { return families[f].name }

// NFTFamily is the nftables family of the proxy's table.
func (f Family) NFTFamily() knftables.Family { return families[f].nft }

// FamilyOf is the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is6() {
		return IPv6
	}
	return IPv4
}

func (f Family) has(a netip.Addr) bool                { return a.IsValid() && FamilyOf(a) == f }
func (f Family) ip() string                           { return families[f].ip }
func (f Family) addrType() string                     { return families[f].addrType }
func (f Family) loopback() string                     { return families[f].loopback }
func (f Family) addressType() discoveryv1.AddressType { return families[f].addressType }
