package proxy

import (
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// Family is the IP family one Proxier programs (nft.Family: the one type of
// every engine). A dual-stack node runs two Proxiers, one per family, each
// with its own table ("ip flatnet-proxy" and "ip6 flatnet-proxy"), as
// kube-proxy runs one proxier per family: a Service's ClusterIP of each
// family, its EndpointSlices of that address type, and the external IPs of
// that family go to that family's table.
type Family = nft.Family

// The families.
const (
	IPv4 = nft.IPv4
	IPv6 = nft.IPv6
)

// FamilyOf is the family of an address.
var FamilyOf = nft.FamilyOf

// addressType is the EndpointSlice address type of a family.
func addressType(f Family) discoveryv1.AddressType {
	if f == IPv6 {
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}
