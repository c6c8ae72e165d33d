package podnet

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/netconv"
)

// Expected is the state an attachment should have, taken from the result of
// its ADD.
type Expected struct {
	Network     string
	ContainerID string
	IfName      string
	Bridge      string
	PodMAC      net.HardwareAddr // nil: not checked
	Addresses   []netip.Prefix
	Routes      []Route
}

// DriftError lists every way the kernel state differs from what was expected.
type DriftError struct{ Problems []string }

func (e *DriftError) Error() string {
	return fmt.Sprintf("attachment drifted from its ADD result: %v", e.Problems)
}

// Verify compares the attachment's kernel state with e.
func Verify(host, pod *netlink.Handle, e Expected) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	link, err := pod.LinkByName(e.IfName)
	if err != nil {
		return &DriftError{Problems: []string{fmt.Sprintf("interface %s is missing from the pod", e.IfName)}}
	}
	if _, ok := link.(*netlink.Veth); !ok {
		add("%s is a %s, not a veth", e.IfName, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		add("%s is down", e.IfName)
	}
	if e.PodMAC != nil && link.Attrs().HardwareAddr.String() != e.PodMAC.String() {
		add("%s has MAC %s, expected %s", e.IfName, link.Attrs().HardwareAddr, e.PodMAC)
	}
	addrs, err := pod.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", e.IfName, err)
	}
	for _, want := range e.Addresses {
		if !hasAddr(addrs, want) {
			add("%s lacks address %s", e.IfName, want)
		}
	}
	routes, err := pod.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", e.IfName, err)
	}
	for _, want := range e.Routes {
		if !hasRoute(routes, want) {
			add("route to %s via %s is missing", want.Dst, want.Via)
		}
	}
	problems = append(problems, verifyHost(host, e)...)
	if len(problems) > 0 {
		return &DriftError{Problems: problems}
	}
	return nil
}

func verifyHost(host *netlink.Handle, e Expected) []string {
	name := HostVethName(e.Network, e.ContainerID, e.IfName)
	hostLink, err := host.LinkByName(name)
	if err != nil {
		return []string{fmt.Sprintf("host veth %s is missing", name)}
	}
	var problems []string
	if hostLink.Attrs().Alias != Alias(e.Network, e.ContainerID, e.IfName) {
		problems = append(problems, fmt.Sprintf("host veth %s belongs to %q", name, hostLink.Attrs().Alias))
	}
	br, err := host.LinkByName(e.Bridge)
	if err != nil {
		return append(problems, fmt.Sprintf("bridge %s is missing", e.Bridge))
	}
	if hostLink.Attrs().MasterIndex != br.Attrs().Index {
		problems = append(problems, fmt.Sprintf("host veth %s is not a port of bridge %s", name, e.Bridge))
	}
	return problems
}

func hasRoute(have []netlink.Route, want Route) bool {
	for _, r := range have {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if want.Dst.Addr().Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if p, ok := netconv.Prefix(r.Dst); ok {
			dst = p
		}
		if dst != want.Dst {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if gw.Unmap() == want.Via || !want.Via.IsValid() && len(r.Gw) == 0 {
			return true
		}
	}
	return false
}
