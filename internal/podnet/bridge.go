// Package podnet makes and inspects the kernel state of pod attachments on a
// node: the node bridge, one veth pair per attachment, the pod's addresses
// and routes.
//
// Design notes (the state left in the kernel, and why):
//
//   - In the node's network namespace (the one the plugin runs in): a Linux
//     bridge (default flatnet0) holding the gateway address of every range, a
//     fixed MAC derived from its name (a bridge otherwise takes the lowest MAC
//     of its ports, and its MAC changes as pods come and go, breaking the ARP
//     caches of every pod), and the MTU of the pods. Forwarding is switched on
//     (net.ipv4.ip_forward, and IPv6 forwarding when an IPv6 range exists)
//     because pods reach other nodes through this node.
//   - Per attachment, a veth pair. The host end is named fn<hash of network,
//     container ID and ifname> so a repeated ADD after a crash finds and
//     replaces its own leftover, and carries the alias
//     "flatnet-cni <network> <containerID> <ifname>" so GC can tell its
//     owner from the kernel alone. It is a bridge port with hairpin mode on,
//     so a pod can reach itself through a Service VIP.
//   - The pod end is created directly inside the pod's namespace (IFLA_NET_NS_FD
//     on the peer), never visible in the node's namespace; it is configured
//     through a netlink handle opened on that namespace, so no thread of the
//     plugin ever switches namespaces.
//   - Deleting either end deletes both; deleting the pod's namespace deletes
//     the pair. Nothing else on the node is touched: no routes, no netfilter.
package podnet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netconv"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

// DefaultBridge is the bridge name used when the configuration names none.
const DefaultBridge = "flatnet0"

// Bridge describes the node bridge a network attaches pods to.
type Bridge struct {
	Name     string
	MTU      int
	Gateways []netip.Prefix // gateway address with the subnet's prefix length
}

// EnsureBridge creates the bridge when missing, brings it up and gives it
// every gateway address it lacks. Concurrent callers are safe: the loser of a
// creation race uses the winner's bridge.
func EnsureBridge(h *netlink.Handle, b Bridge) (netlink.Link, error) {
	link, err := h.LinkByName(b.Name)
	if _, notFound := err.(netlink.LinkNotFoundError); notFound {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = b.Name
		attrs.MTU = b.MTU
		attrs.HardwareAddr = stableMAC("bridge/" + b.Name)
		attrs.Flags = net.FlagUp
		err = h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", b.Name, err)
		}
		link, err = h.LinkByName(b.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s: %w", b.Name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge", b.Name, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", b.Name, err)
		}
	}
	if err := ensureAddrs(h, link, b.Gateways); err != nil {
		return nil, fmt.Errorf("bridge %s: %w", b.Name, err)
	}
	return link, nil
}

func ensureAddrs(h *netlink.Handle, link netlink.Link, want []netip.Prefix) error {
	if len(want) == 0 {
		return nil
	}
	have, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, p := range want {
		if hasAddr(have, p) {
			continue
		}
		addr := &netlink.Addr{IPNet: netconv.IPNet(p)}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // the gateway is ours alone: usable at once, not after DAD
		}
		err := h.AddrAdd(link, addr)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	return nil
}

func hasAddr(have []netlink.Addr, p netip.Prefix) bool {
	for _, a := range have {
		if pfx, ok := netconv.Prefix(a.IPNet); ok && pfx == p {
			return true
		}
	}
	return false
}

// EnableForwarding switches on IP forwarding for the families in use, in the
// caller's network namespace, writing only when it is off.
func EnableForwarding(v4, v6 bool) error {
	if v4 {
		if err := sysctl.Ensure("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	if v6 {
		if err := sysctl.Ensure("/proc/sys/net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}
	return nil
}

// UplinkMTU is the MTU of the interface holding the default route in the
// caller's namespace, or 1500 when there is none.
func UplinkMTU(h *netlink.Handle) int {
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 1500
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.LinkIndex > 0 {
			if link, err := h.LinkByIndex(r.LinkIndex); err == nil && link.Attrs().MTU > 0 {
				return link.Attrs().MTU
			}
		}
	}
	return 1500
}

// stableMAC derives a locally administered unicast MAC from a seed.
func stableMAC(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}
