// Package routes programs host-gw routing on a node: for every other node, a
// route to its pod CIDR via its InternalIP on the shared L2 segment, as
// flannel's host-gw backend and kindnet do.
//
// Design notes (kernel state): routes in the main table of the node's
// network namespace, each tagged with protocol RouteProtocol, which is how
// Sync tells its own routes from everyone else's: it adds what is missing,
// replaces what is wrong and deletes only routes with its protocol that no
// node asks for any more. Nothing is removed on exit, so a restarting agent
// leaves established pod-to-pod connections alone.
package routes

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netconv"
)

// RouteProtocol marks flatnet's routes (`ip route` shows "proto 74").
const RouteProtocol netlink.RouteProtocol = 74

// Route is one desired route: a pod CIDR via a node's address.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// Sync makes the routes with RouteProtocol equal to want, and reports how
// many it added, replaced and deleted.
func Sync(h *netlink.Handle, want []Route) (added, deleted int, err error) {
	have, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, 0, fmt.Errorf("list routes: %w", err)
	}
	current := map[netip.Prefix]netlink.Route{}
	for _, r := range have {
		if p, ok := netconv.Prefix(r.Dst); ok {
			current[p] = r
		}
	}
	var errs []error
	desired := map[netip.Prefix]bool{}
	for _, w := range want {
		desired[w.Dst] = true
		if r, ok := current[w.Dst]; ok {
			if gw, _ := netip.AddrFromSlice(r.Gw); gw.Unmap() == w.Via {
				continue
			}
		}
		route := &netlink.Route{Dst: netconv.IPNet(w.Dst), Gw: w.Via.AsSlice(), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if err := h.RouteReplace(route); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", w.Dst, w.Via, err))
			continue
		}
		added++
	}
	for p, r := range current {
		if desired[p] {
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
			continue
		}
		deleted++
	}
	return added, deleted, errors.Join(errs...)
}

// Count is the number of routes with RouteProtocol.
func Count(h *netlink.Handle) (int, error) {
	have, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	return len(have), err
}
