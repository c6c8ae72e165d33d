// Package cni is flatnet-cni, a CNI 1.1.0 plugin: per attachment a veth
// pair from the pod's namespace to the node bridge, an address from the
// built-in IPAM (package ipam) and the pod's routes.
//
// Design notes:
//
//   - One process per call, started by the runtime in the node's network
//     namespace; it never execs another plugin (IPAM is built in) and never
//     switches threads between namespaces: the pod's side is configured
//     through a netlink handle opened on the pod's namespace.
//   - ADD is idempotent per (containerID, ifname): a repeated ADD after a
//     crash gets the same address and replaces its own half-made veth. Any
//     failure after the address is allocated removes the veth, then releases
//     the address.
//   - An address stays allocated while its attachment's veth exists: a DEL
//     (or a failed ADD) that cannot remove the veth keeps the address and
//     fails, and the runtime retries. DEL tolerates a missing namespace, link
//     or allocation, so it can be repeated. GC releases every allocation and
//     host veth of this network whose owner is not in
//     cni.dev/valid-attachments.
//   - Errors carry the spec's codes where it has one (4 for an attachment
//     the IPAM store cannot record, 5 for a store that cannot be read or
//     written, corrupt included, 50 from STATUS) and the plugin's own from
//     100 up otherwise.
//   - With a "policy" section, ADD asks flatnetd (package admit) to admit
//     the pod's addresses into its NetworkPolicy tables after allocating
//     them and before making the veth, and fails with code 11 (try again
//     later), releasing them, when flatnetd refuses or does not answer in
//     time, unless failOpen; DEL tells flatnetd, best effort.
//   - The kernel state left behind is described in package podnet, the disk
//     state in package ipam.
package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// Plugin-specific error codes (the spec leaves 100 and up to plugins).
const (
	ErrRangeExhausted   uint = 100 // no free address in a range set
	ErrInterfaceExists  uint = 101 // CNI_IFNAME already exists in the pod
	ErrAddressConflict  uint = 102 // a requested address is taken or out of range
	ErrAttachmentDrift  uint = 103 // CHECK found the kernel or IPAM state changed
	ErrDatapathFailure  uint = 104 // the kernel refused a change
	ErrIPAMStoreFailure uint = types.ErrIOFailure
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Main runs the plugin; about is printed when it is started by hand.
func Main(about string) {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		GC:     cmdGC,
		Status: cmdStatus,
	}, version.PluginSupports(SupportedVersions...), about)
}

// session holds what every verb opens: the handles on the two namespaces
// and the allocator.
type session struct {
	cfg   *Config
	owner ipam.Owner
	host  *netlink.Handle
	pod   *netlink.Handle // nil unless the verb needs the pod's namespace
	podNS netns.NsHandle
	alloc *ipam.Allocator
}

// open parses the configuration and opens the handles; withPod opens the
// pod's namespace too, and a missing one is an error (code 4).
func open(args *skel.CmdArgs, withPod bool) (*session, error) {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	s := &session{cfg: cfg, owner: ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}, podNS: -1}
	if s.host, err = netlink.NewHandle(); err != nil {
		return nil, types.NewError(ErrDatapathFailure, "open netlink", err.Error())
	}
	if withPod {
		if s.podNS, err = netns.GetFromPath(args.Netns); err != nil {
			s.podNS = -1
			s.close()
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_NETNS=%s: cannot open network namespace", args.Netns), err.Error())
		}
		if s.pod, err = netlink.NewHandleAt(s.podNS); err != nil {
			s.close()
			return nil, types.NewError(ErrDatapathFailure, "open netlink in "+args.Netns, err.Error())
		}
	}
	if s.alloc, err = openIPAM(cfg); err != nil {
		s.close()
		return nil, types.NewError(ErrIPAMStoreFailure, "open IPAM store", err.Error())
	}
	return s, nil
}

// openIPAM opens the IPAM store of cfg's network; the store's warnings go
// to stderr, which the runtime keeps in its log.
func openIPAM(cfg *Config) (*ipam.Allocator, error) {
	c := cfg.IPAM
	c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("plugin", "flatnet-cni", "network", cfg.Conf.Name)
	return ipam.New(c)
}

func (s *session) close() {
	if s.alloc != nil {
		_ = s.alloc.Close()
	}
	if s.pod != nil {
		s.pod.Close()
	}
	if s.podNS >= 0 {
		_ = s.podNS.Close()
	}
	if s.host != nil {
		s.host.Close()
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	s, err := open(args, true)
	if err != nil {
		return err
	}
	defer s.close()
	cfg := s.cfg
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = podnet.UplinkMTU(s.host)
	}
	br, err := podnet.EnsureBridge(s.host, podnet.Bridge{Name: cfg.Bridge, MTU: mtu, Gateways: gateways(cfg)})
	if err != nil {
		return types.NewError(ErrDatapathFailure, "set up node bridge", err.Error())
	}
	if err := podnet.EnableForwarding(cfg.HasFamily(false), cfg.HasFamily(true)); err != nil {
		return types.NewError(ErrDatapathFailure, "enable forwarding", err.Error())
	}

	allocs, err := s.alloc.Allocate(s.owner, cfg.RequestedIPs)
	if err != nil {
		return ipamError("allocate addresses", err)
	}
	success := false
	defer func() {
		if !success {
			s.rollback()
		}
	}()

	if err := s.admitPod(args, allocs); err != nil {
		return err
	}
	pod := podnet.Pod{
		Network:     cfg.Conf.Name,
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		MTU:         mtu,
		MAC:         cfg.MAC,
		Routes:      cfg.podRoutes(allocs),
		Hairpin:     cfg.Hairpin,
	}
	for _, a := range allocs {
		pod.Addresses = append(pod.Addresses, a.Prefix())
	}
	att, err := podnet.Attach(s.host, s.pod, s.podNS, br, pod)
	if err != nil {
		var exists *podnet.InterfaceExistsError
		if errors.As(err, &exists) {
			return types.NewError(ErrInterfaceExists, err.Error(), "")
		}
		return types.NewError(ErrDatapathFailure, "attach pod", err.Error())
	}
	result, err := buildResult(cfg, args, att, allocs, pod.Routes, mtu)
	if err != nil {
		return err
	}
	success = true
	return types.PrintResult(result, cfg.Conf.CNIVersion)
}

// rollback undoes a failed ADD: it removes the attachment's veth, then
// releases its addresses. A veth it cannot remove keeps them allocated until
// a DEL or GC succeeds.
func (s *session) rollback() {
	if podnet.Detach(s.host, s.cfg.Conf.Name, s.owner.ContainerID, s.owner.IfName) == nil {
		_ = s.alloc.Release(s.owner)
	}
}

// cmdDel removes the attachment's veth, then releases its addresses. When
// the veth cannot be removed the addresses stay allocated, so that no other
// pod gets them while it exists, and DEL fails for the runtime to retry. A
// missing namespace or link is not an error (the veth went with it).
func cmdDel(args *skel.CmdArgs) error {
	s, err := open(args, false)
	if err != nil {
		return err
	}
	defer s.close()
	if err := podnet.Detach(s.host, s.cfg.Conf.Name, args.ContainerID, args.IfName); err != nil {
		return types.NewError(ErrDatapathFailure, "remove pod interfaces (addresses kept until a DEL succeeds)", err.Error())
	}
	s.releasePod(args)
	if err := s.alloc.Release(s.owner); err != nil {
		return ipamError("release addresses", err)
	}
	return nil
}

func gateways(cfg *Config) []netip.Prefix {
	var out []netip.Prefix
	for _, set := range cfg.IPAM.Sets {
		for _, r := range set {
			out = append(out, netip.PrefixFrom(r.Gateway, r.Subnet.Bits()))
		}
	}
	return out
}

// ipamError turns a failed IPAM operation op into a CNI error: the spec's
// 4 for an owner (CNI_CONTAINERID, CNI_IFNAME) the store cannot record and 5
// for a store that cannot be read or written (a corrupt one names the file in
// the message); the plugin's own codes for an exhausted range or a
// conflicting request.
func ipamError(op string, err error) error {
	var exhausted *ipam.ExhaustedError
	var conflict *ipam.ConflictError
	var owner *ipam.InvalidOwnerError
	var corrupt *ipam.CorruptError
	switch {
	case errors.As(err, &exhausted):
		return types.NewError(ErrRangeExhausted, err.Error(), "")
	case errors.As(err, &conflict):
		return types.NewError(ErrAddressConflict, err.Error(), "")
	case errors.As(err, &owner):
		return types.NewError(types.ErrInvalidEnvironmentVariables, op+": "+err.Error(), "")
	case errors.As(err, &corrupt):
		return types.NewError(ErrIPAMStoreFailure, op+": "+err.Error(), "")
	}
	return types.NewError(ErrIPAMStoreFailure, op, err.Error())
}
