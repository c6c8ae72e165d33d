package proxy

import (
	"errors"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Conntrack removes conntrack entries that would keep sending UDP traffic
// to a place it can no longer go.
type Conntrack interface {
	// ClearService deletes UDP flows to the Service port's IPs and NodePort.
	ClearService(sp *ServicePort) error
	// ClearEndpoint deletes UDP flows of the Service port answered by ip.
	ClearEndpoint(sp *ServicePort, ip netip.Addr) error
}

// KernelConntrack works on the conntrack table of the caller's namespace.
type KernelConntrack struct{}

var _ Conntrack = KernelConntrack{}

func udpFilter(dst netip.Addr, port uint16) *netlink.ConntrackFilter {
	f := &netlink.ConntrackFilter{}
	_ = f.AddProtocol(unix.IPPROTO_UDP)
	if dst.IsValid() {
		_ = f.AddIP(netlink.ConntrackOrigDstIP, net.IP(dst.AsSlice()))
	}
	_ = f.AddPort(netlink.ConntrackOrigDstPort, port)
	return f
}

// ClearService implements Conntrack.
func (KernelConntrack) ClearService(sp *ServicePort) error {
	filters := []netlink.CustomConntrackFilter{udpFilter(sp.ClusterIP, sp.Port)}
	for _, ip := range sp.ExternalIPs {
		filters = append(filters, udpFilter(ip, sp.Port))
	}
	if sp.NodePort != 0 {
		filters = append(filters, udpFilter(netip.Addr{}, sp.NodePort))
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	return err
}

// ClearEndpoint implements Conntrack.
func (KernelConntrack) ClearEndpoint(sp *ServicePort, ip netip.Addr) error {
	var errs []error
	for _, f := range []*netlink.ConntrackFilter{udpFilter(sp.ClusterIP, sp.Port)} {
		_ = f.AddIP(netlink.ConntrackReplySrcIP, net.IP(ip.AsSlice()))
		_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
		errs = append(errs, err)
	}
	if sp.NodePort != 0 {
		f := udpFilter(netip.Addr{}, sp.NodePort)
		_ = f.AddIP(netlink.ConntrackReplySrcIP, net.IP(ip.AsSlice()))
		_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
