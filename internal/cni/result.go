package cni

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/netconv"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// buildResult makes the ADD result: the host veth and the pod interface, the
// addresses on the pod interface and the pod's routes. When the plugin is not
// first in a chain, its interfaces, addresses and routes extend prevResult.
func buildResult(cfg *Config, args *skel.CmdArgs, att *podnet.Attached, allocs []ipam.Allocation, routes []podnet.Route, mtu int) (*current.Result, error) {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if cfg.Conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(cfg.Conf.PrevResult)
		if err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "convert prevResult", err.Error())
		}
		res = prev
	}
	base := len(res.Interfaces)
	res.Interfaces = append(res.Interfaces,
		&current.Interface{Name: att.HostVeth, Mac: att.HostMAC.String()},
		&current.Interface{Name: args.IfName, Mac: att.PodMAC.String(), Mtu: mtu, Sandbox: args.Netns},
	)
	for _, a := range allocs {
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(base + 1),
			Address:   *netconv.IPNet(a.Prefix()),
			Gateway:   a.Gateway.AsSlice(),
		})
	}
	for _, r := range routes {
		rt := &types.Route{Dst: *netconv.IPNet(r.Dst)}
		if r.Via.IsValid() {
			rt.GW = r.Via.AsSlice()
		}
		res.Routes = append(res.Routes, rt)
	}
	if !cfg.Conf.DNS.IsEmpty() {
		res.DNS = cfg.Conf.DNS
	}
	return res, nil
}

// expectation extracts from a previous ADD result what CHECK must find.
func expectation(cfg *Config, args *skel.CmdArgs) (podnet.Expected, error) {
	e := podnet.Expected{Network: cfg.Conf.Name, ContainerID: args.ContainerID, IfName: args.IfName, Bridge: cfg.Bridge}
	if cfg.Conf.PrevResult == nil {
		return e, types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the configuration", "")
	}
	res, err := current.NewResultFromResult(cfg.Conf.PrevResult)
	if err != nil {
		return e, types.NewError(types.ErrDecodingFailure, "convert prevResult", err.Error())
	}
	idx := -1
	for i, iface := range res.Interfaces {
		if iface.Name == args.IfName && (iface.Sandbox == "" || iface.Sandbox == args.Netns) {
			idx = i
			if iface.Mac != "" {
				if e.PodMAC, err = net.ParseMAC(iface.Mac); err != nil {
					return e, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: bad MAC %q", iface.Mac), "")
				}
			}
		}
	}
	if idx < 0 {
		return e, types.NewError(ErrAttachmentDrift, fmt.Sprintf("prevResult has no interface %s in %s", args.IfName, args.Netns), "")
	}
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface == idx {
			if p, ok := netconv.Prefix(&ip.Address); ok {
				e.Addresses = append(e.Addresses, p)
			}
		}
	}
	for _, r := range res.Routes {
		dst, ok := netconv.Prefix(&r.Dst)
		if !ok {
			continue
		}
		via, _ := netip.AddrFromSlice(r.GW)
		via = via.Unmap()
		if !via.IsValid() {
			via = gatewayFor(res, idx, dst.Addr().Is6())
		}
		if onSubnet(e.Addresses, via) { // routes of other chained plugins are theirs to check
			e.Routes = append(e.Routes, podnet.Route{Dst: dst.Masked(), Via: via})
		}
	}
	return e, nil
}

// gatewayFor is the gateway of the interface's address of one family: a
// result route without "gw" goes via it (CNI spec: the default gateway).
func gatewayFor(res *current.Result, idx int, v6 bool) netip.Addr {
	for _, ip := range res.IPs {
		gw, ok := netip.AddrFromSlice(ip.Gateway)
		if ok && ip.Interface != nil && *ip.Interface == idx && gw.Unmap().Is6() == v6 {
			return gw.Unmap()
		}
	}
	return netip.Addr{}
}

func onSubnet(addrs []netip.Prefix, a netip.Addr) bool {
	for _, p := range addrs {
		if a.IsValid() && p.Masked().Contains(a) {
			return true
		}
	}
	return false
}
