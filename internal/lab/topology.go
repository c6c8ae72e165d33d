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
}

func (l Layout) hosts() []host {
	hs := []host{{"cp", APIServerIP}}
	for i := 1; i <= l.Nodes; i++ {
		hs = append(hs, host{l.NodeName(i), l.NodeIP(i)})
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
	br, err := ensureBridge(swh, "br0", netip.PrefixFrom(OutsideIP, Underlay.Bits()))
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
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: h.ip.AsSlice(), Mask: net.CIDRMask(Underlay.Bits(), 32)}}
	if err := hh.AddrAdd(eth0, addr); err != nil {
		return err
	}
	return hh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: OutsideIP.AsSlice()})
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

func ensureBridge(h *netlink.Handle, name string, addr netip.Prefix) (netlink.Link, error) {
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
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
	if err := h.AddrAdd(link, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, err
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
