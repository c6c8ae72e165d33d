package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netns"
)

// host is one machine on the underlay: its namespace role, its address and
// the name of its port on the switch.
type host struct {
	role string
	ip   netip.Addr
	ip6  netip.Addr
}

func (l Layout) hosts() []host {
	hs := []host{{"cp", APIServerIP, APIServerIP6}}
	for i := 1; i <= l.Nodes; i++ {
		hs = append(hs, host{l.NodeName(i), l.NodeIP(i), l.NodeIP6(i)})
	}
	return hs
}

// ensureTopology creates the underlay: the switch namespace with br0 (the
// outside host's address on it), and per host a namespace with eth0 on br0,
// its address and a default route via the outside host. What exists is kept.
func (l Layout) ensureTopology() error {
	sw, err := ensureNS(l.NS("switch"))
	if err != nil {
		return err
	}
	swh, err := handleAt(sw)
	if err != nil {
		return err
	}
	defer swh.Close()
	br, err := ensureBridge(swh, "br0", netip.PrefixFrom(OutsideIP, Underlay.Bits()), netip.PrefixFrom(OutsideIP6, Underlay6.Bits()))
	if err != nil {
		return fmt.Errorf("underlay bridge: %w", err)
	}
	if err := writeSysctlIn(sw, "/proc/sys/net/ipv4/ip_forward", "0"); err != nil {
		return err
	}
	for _, h := range l.hosts() {
		if err := l.ensureHost(swh, br, h); err != nil {
			return fmt.Errorf("host %s: %w", h.role, err)
		}
	}
	return nil
}

func (l Layout) ensureHost(swh *netlink.Handle, br netlink.Link, h host) error {
	path, err := ensureNS(l.NS(h.role))
	if err != nil {
		return err
	}
	hh, err := handleAt(path)
	if err != nil {
		return err
	}
	defer hh.Close()
	if _, err := hh.LinkByName("eth0"); err == nil {
		return nil // already wired
	}
	_ = deleteLink(swh, h.role) // half-made by an interrupted run
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = h.role
	attrs.MasterIndex = br.Attrs().Index
	attrs.Flags = net.FlagUp
	if err := swh.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}); err != nil {
		return fmt.Errorf("veth to switch: %w", err)
	}
	eth0, err := hh.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := hh.LinkSetUp(eth0); err != nil {
		return err
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(h.ip, Underlay.Bits()), netip.PrefixFrom(h.ip6, Underlay6.Bits())} {
		if err := hh.AddrAdd(eth0, netlinkAddr(a)); err != nil {
			return err
		}
	}
	for _, gw := range []netip.Addr{OutsideIP, OutsideIP6} {
		if err := hh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
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

func ensureNS(name string) (string, error) {
	path := netns.Path(name)
	if _, err := os.Stat(path); err == nil {
		if ns, err := vnetns.GetFromPath(path); err == nil {
			ns.Close()
			return path, nil
		}
		_ = netns.Delete(name) // a file left without its mount
	}
	return netns.Create(name)
}

func handleAt(path string) (*netlink.Handle, error) {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
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

// writeSysctlIn writes a /proc/sys value as seen from inside a namespace.
func writeSysctlIn(nsPath, key, value string) error {
	return netns.Do(nsPath, func() error { return os.WriteFile(key, []byte(value), 0o644) })
}
