package nft

import (
	"net/netip"

	gnftables "github.com/google/nftables"
	"sigs.k8s.io/knftables"
)

// Family is the IP family of a table: each engine keeps one table per
// family in use on the node ("ip <name>" and "ip6 <name>"), programmed by
// one code path parameterised by the family. Bridge is the family of a
// table on the bridge's own hooks (frames entering a bridge port), whose
// rules may match IPv4, IPv6 and ARP alike; it has no address type.
type Family int

const (
	IPv4 Family = iota
	IPv6
	Bridge
)

// words is how nftables and the netlink API name a family.
type words struct {
	name     string
	nft      knftables.Family
	netlink  gnftables.TableFamily
	ip       string // payload keyword: "ip saddr" or "ip6 saddr"
	addrType string // set and map key type
	loopback string // the loopback range
	addrLen  int    // bytes of an address in a set key
}

var families = [...]words{
	IPv4: {"IPv4", knftables.IPv4Family, gnftables.TableFamilyIPv4, "ip", "ipv4_addr", "127.0.0.0/8", 4},
	IPv6: {"IPv6", knftables.IPv6Family, gnftables.TableFamilyIPv6, "ip6", "ipv6_addr", "::1", 16},
	// Bridge: "ip" and "ip6" payloads both, each behind its protocol
	Bridge: {"bridge", knftables.BridgeFamily, gnftables.TableFamilyBridge, "", "", "", 0},
}

func (f Family) String() string { return families[f].name }

// NFT is the nftables family of the table.
func (f Family) NFT() knftables.Family { return families[f].nft }

// IP is the payload keyword of the family: "ip" or "ip6".
func (f Family) IP() string { return families[f].ip }

// AddrType is the set and map key type of an address: "ipv4_addr" or
// "ipv6_addr".
func (f Family) AddrType() string { return families[f].addrType }

// Loopback is the loopback range of the family, as nft writes it.
func (f Family) Loopback() string { return families[f].loopback }

// AddrLen is the size of an address in a set key, in bytes.
func (f Family) AddrLen() int { return families[f].addrLen }

// Has reports whether a is a valid address of the family (an IPv4-mapped
// IPv6 address counts as IPv4).
func (f Family) Has(a netip.Addr) bool { return a.IsValid() && FamilyOf(a) == f }

// FamilyOf is the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is6() {
		return IPv6
	}
	return IPv4
}

func (f Family) addrLen() uint32 { return uint32(families[f].addrLen) }

// proto is the netfilter protocol family (NFPROTO_IPV4 or NFPROTO_IPV6),
// which is also the nfgenmsg family of the table's messages.
func (f Family) proto() byte { return byte(families[f].netlink) }
