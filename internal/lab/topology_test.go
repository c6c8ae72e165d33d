package lab

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/netconv"
	"github.com/flatnet-io/flatnet/internal/netns"
)

// TestTopologyCompletesHalfDoneHosts leaves each host in a state that a
// `lab up` killed half-way through could leave, runs the topology step
// again and checks that every host is whole.
func TestTopologyCompletesHalfDoneHosts(t *testing.T) {
	requireRoot(t)
	l := newTestLayout(t, testLabName(""), 2)
	if err := ensureTopology(l); err != nil {
		t.Fatal(err)
	}
	checkTopology(t, l)
	for _, tc := range halfDoneHosts() {
		t.Run(tc.name, func(t *testing.T) {
			sw, node := testHandle(t, l.NS("switch")), testHandle(t, l.NS("node-1"))
			if err := tc.damage(sw, node); err != nil {
				t.Fatal(err)
			}
			if err := ensureTopology(l); err != nil {
				t.Fatal(err)
			}
			checkTopology(t, l)
		})
	}
	t.Run("namespace file without its mount", func(t *testing.T) {
		if err := netns.Delete(l.NS("node-2")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(netns.Path(l.NS("node-2")), nil, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := ensureTopology(l); err != nil {
			t.Fatal(err)
		}
		checkTopology(t, l)
	})
}

// halfDone is a state of node-1's wiring that an interrupted run leaves.
type halfDone struct {
	name   string
	damage func(sw, node *netlink.Handle) error
}

func halfDoneHosts() []halfDone {
	return []halfDone{
		{"eth0 without addresses or routes", func(_, node *netlink.Handle) error {
			eth0, err := node.LinkByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := node.AddrList(eth0, netlink.FAMILY_ALL)
			for _, a := range addrs {
				err = node.AddrDel(eth0, &a)
			}
			return err
		}},
		{"eth0 down", func(_, node *netlink.Handle) error {
			eth0, err := node.LinkByName("eth0")
			if err != nil {
				return err
			}
			return node.LinkSetDown(eth0)
		}},
		{"switch port down and off the bridge", func(sw, _ *netlink.Handle) error {
			port, err := sw.LinkByName("node-1")
			if err != nil {
				return err
			}
			if err := sw.LinkSetNoMaster(port); err != nil {
				return err
			}
			return sw.LinkSetDown(port)
		}},
		{"switch port without its eth0", func(sw, node *netlink.Handle) error {
			eth0, err := node.LinkByName("eth0")
			if err != nil {
				return err
			}
			if err := node.LinkDel(eth0); err != nil {
				return err
			}
			attrs := netlink.NewLinkAttrs()
			attrs.Name = "node-1"
			return sw.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "half"})
		}},
	}
}

func testHandle(t *testing.T, name string) *netlink.Handle {
	t.Helper()
	h, err := netns.Handle(netns.Path(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// checkTopology verifies the whole desired state of every host: eth0 up
// with an address of each family and a default route of each family via
// the outside host, its switch port up on br0.
func checkTopology(t *testing.T, l Layout) {
	t.Helper()
	sw := testHandle(t, l.NS("switch"))
	br, err := sw.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts(l) {
		port, err := sw.LinkByName(h.role)
		if err != nil {
			t.Errorf("%s: switch port: %v", h.role, err)
		} else if port.Attrs().MasterIndex != br.Attrs().Index || port.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: switch port not up on br0 (master %d, flags %v)", h.role, port.Attrs().MasterIndex, port.Attrs().Flags)
		}
		checkHost(t, testHandle(t, l.NS(h.role)), h)
	}
}

func checkHost(t *testing.T, hh *netlink.Handle, h host) {
	t.Helper()
	eth0, err := hh.LinkByName("eth0")
	if err != nil {
		t.Errorf("%s: %v", h.role, err)
		return
	}
	if eth0.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: eth0 is down", h.role)
	}
	addrs, _ := hh.AddrList(eth0, netlink.FAMILY_ALL)
	for _, want := range []netip.Prefix{netip.PrefixFrom(h.ip, Underlay.Bits()), netip.PrefixFrom(h.ip6, Underlay6.Bits())} {
		if !hasPrefix(addrs, want) {
			t.Errorf("%s: eth0 lacks %s (has %v)", h.role, want, addrs)
		}
	}
	routes, _ := hh.RouteList(eth0, netlink.FAMILY_ALL)
	for _, gw := range []netip.Addr{OutsideIP, OutsideIP6} {
		if !hasDefaultVia(routes, gw) {
			t.Errorf("%s: no default route via %s (routes %v)", h.role, gw, routes)
		}
	}
}

func hasPrefix(addrs []netlink.Addr, p netip.Prefix) bool {
	for _, a := range addrs {
		if got, ok := netconv.Prefix(a.IPNet); ok && got == p {
			return true
		}
	}
	return false
}

func hasDefaultVia(routes []netlink.Route, gw netip.Addr) bool {
	for _, r := range routes {
		dst, ok := netconv.Prefix(r.Dst)
		isDefault := r.Dst == nil || ok && dst.Bits() == 0
		if g, ok := netip.AddrFromSlice(r.Gw); ok && isDefault && g.Unmap() == gw {
			return true
		}
	}
	return false
}
