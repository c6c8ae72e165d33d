package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

// Fixed addressing of a lab; every lab has its own underlay namespace, so two
// labs never see each other's addresses. A lab is dual-stack, IPv4 first:
// every host has an address of each family, nodes get a pod CIDR of each
// (kube-controller-manager cuts a /24 and a /64), pods an IP of each, and
// Services are IPv4 unless their ipFamilyPolicy asks for IPv6 too.
var (
	Underlay    = netip.MustParsePrefix("172.30.0.0/24")
	OutsideIP   = netip.MustParseAddr("172.30.0.1")
	APIServerIP = netip.MustParseAddr("172.30.0.2")
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")

	Underlay6    = netip.MustParsePrefix("fd00:30::/64")
	OutsideIP6   = netip.MustParseAddr("fd00:30::1")
	APIServerIP6 = netip.MustParseAddr("fd00:30::2")
	ClusterCIDR6 = netip.MustParsePrefix("fd00:244::/48")
	ServiceCIDR6 = netip.MustParsePrefix("fd00:96::/112")
)

// ClusterCIDRs and ServiceCIDRs are the flag values of a dual-stack lab.
func ClusterCIDRs() string { return ClusterCIDR.String() + "," + ClusterCIDR6.String() }
func ServiceCIDRs() string { return ServiceCIDR.String() + "," + ServiceCIDR6.String() }

// MaxNodes is the most nodes a lab has: node i's underlay address ends in
// 10+i, and .255 is the broadcast address.
const MaxNodes = 244

// NodeIP is the underlay address of node i.
func NodeIP(i int) netip.Addr {
	a := Underlay.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// NodeIP6 is the IPv6 underlay address of node i: fd00:30::(10+i), the
// same last digits as its IPv4 address.
func NodeIP6(i int) netip.Addr {
	return netip.MustParseAddr(Underlay6.Addr().String() + strconv.Itoa(10+i))
}

// NodeIPs are node i's InternalIPs, IPv4 first.
func NodeIPs(i int) []netip.Addr { return []netip.Addr{NodeIP(i), NodeIP6(i)} }

// apiServerURL is how nodes reach the API server.
func apiServerURL() string { return fmt.Sprintf("https://%s:6443", APIServerIP) }

// host is one machine on the underlay: its namespace role, its address and
// the name of its port on the switch.
type host struct {
	role string
	ip   netip.Addr
	ip6  netip.Addr
}

// hosts are the machines on the underlay of the lab l names: the control
// plane's and the nodes'.
func hosts(l Layout) []host {
	hs := []host{{"cp", APIServerIP, APIServerIP6}}
	for i := 1; i <= l.Nodes; i++ {
		hs = append(hs, host{l.NodeName(i), NodeIP(i), NodeIP6(i)})
	}
	return hs
}

// ensureTopology creates the underlay: the switch namespace with br0 (the
// outside host's address on it), and per host a namespace with eth0 on br0,
// its address and a default route via the outside host. Every step checks
// the whole desired state of what it makes and completes what is missing,
// so a run killed at any point is finished by the next one.
func ensureTopology(l Layout) error {
	sw, err := ensureNS(l.NS("switch"))
	if err != nil {
		return err
	}
	swh, err := netns.Handle(sw)
	if err != nil {
		return err
	}
	defer swh.Close()
	br, err := ensureBridge(swh, "br0", netip.PrefixFrom(OutsideIP, Underlay.Bits()), netip.PrefixFrom(OutsideIP6, Underlay6.Bits()))
	if err != nil {
		return fmt.Errorf("underlay bridge: %w", err)
	}
	if err := sysctl.EnsureIn(sw, "/proc/sys/net/ipv4/ip_forward", "0"); err != nil {
		return err
	}
	for _, h := range hosts(l) {
		if err := ensureHost(l, swh, br, h); err != nil {
			return fmt.Errorf("host %s: %w", h.role, err)
		}
	}
	return nil
}

// ensureHost wires host h: its veth pair (eth0 inside, h.role on the
// switch), the switch port up on br0, eth0 up with its addresses, and the
// default routes.
func ensureHost(l Layout, swh *netlink.Handle, br netlink.Link, h host) error {
	path, err := ensureNS(l.NS(h.role))
	if err != nil {
		return err
	}
	hh, err := netns.Handle(path)
	if err != nil {
		return err
	}
	defer hh.Close()
	eth0, port, err := ensureVeth(swh, hh, path, h.role)
	if err != nil {
		return err
	}
	if port.Attrs().MasterIndex != br.Attrs().Index {
		if err := swh.LinkSetMaster(port, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", h.role, br.Attrs().Name, err)
		}
	}
	if err := swh.LinkSetUp(port); err != nil {
		return err
	}
	if err := hh.LinkSetUp(eth0); err != nil {
		return err
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(h.ip, Underlay.Bits()), netip.PrefixFrom(h.ip6, Underlay6.Bits())} {
		if err := hh.AddrReplace(eth0, netlinkAddr(a)); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
	}
	for _, gw := range []netip.Addr{OutsideIP, OutsideIP6} {
		if err := hh.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

// ensureVeth returns the pair eth0 (in the host's namespace at path) and
// port (in the switch's), making it unless both ends exist; a lone end left
// by an interrupted run is deleted first.
func ensureVeth(swh, hh *netlink.Handle, path, port string) (netlink.Link, netlink.Link, error) {
	eth0, errE := hh.LinkByName("eth0")
	p, errP := swh.LinkByName(port)
	if errE == nil && errP == nil {
		return eth0, p, nil
	}
	if errE == nil {
		_ = hh.LinkDel(eth0)
	}
	_ = deleteLink(swh, port)
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, nil, err
	}
	defer ns.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = port
	if err := swh.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}); err != nil {
		return nil, nil, fmt.Errorf("veth to switch: %w", err)
	}
	if eth0, err = hh.LinkByName("eth0"); err != nil {
		return nil, nil, err
	}
	if p, err = swh.LinkByName(port); err != nil {
		return nil, nil, err
	}
	return eth0, p, nil
}

// netlinkAddr is an interface address; an IPv6 one skips duplicate address
// detection (the lab alone hands out its addresses), so it is usable at once.
func netlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// ensureNS returns the path of the named namespace, creating it unless it
// is there. A file at that path that is not a namespace (netns.Create
// killed between making the file and mounting the namespace on it) is
// replaced.
func ensureNS(name string) (string, error) {
	path := netns.Path(name)
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil {
		if st.Type == unix.NSFS_MAGIC {
			return path, nil
		}
		if err := netns.Delete(name); err != nil {
			return "", err
		}
	}
	return netns.Create(name)
}

func ensureBridge(h *netlink.Handle, name string, addrs ...netip.Prefix) (netlink.Link, error) {
	link, err := h.LinkByName(name)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.Flags = net.FlagUp
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, err
		}
		if link, err = h.LinkByName(name); err != nil {
			return nil, err
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, err
	}
	for _, addr := range addrs {
		if err := h.AddrAdd(link, netlinkAddr(addr)); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, err
		}
	}
	return link, nil
}

func deleteLink(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return nil
	}
	return h.LinkDel(link)
}
