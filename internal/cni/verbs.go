package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// cmdCheck compares the attachment with the prevResult of its ADD: the pod
// interface (type, MAC, up), its addresses and routes, the host veth on the
// bridge, and the IPAM claims.
func cmdCheck(args *skel.CmdArgs) error {
	s, err := open(args, true)
	if err != nil {
		return err
	}
	defer s.close()
	want, err := expectation(s.cfg, args)
	if err != nil {
		return err
	}
	var problems []string
	if err := podnet.Verify(s.host, s.pod, want); err != nil {
		var drift *podnet.DriftError
		if !errors.As(err, &drift) {
			return types.NewError(ErrDatapathFailure, "inspect attachment", err.Error())
		}
		problems = append(problems, drift.Problems...)
	}
	held, err := s.alloc.Lookup(s.owner)
	if err != nil {
		return ipamError("read IPAM store", err)
	}
	for _, p := range want.Addresses {
		if !slices.ContainsFunc(held, func(a ipam.Allocation) bool { return a.Addr == p.Addr() }) {
			problems = append(problems, fmt.Sprintf("address %s is not allocated to %s in the IPAM store", p.Addr(), s.owner))
		}
	}
	if len(problems) > 0 {
		return types.NewError(ErrAttachmentDrift, "attachment drifted from its ADD result: "+strings.Join(problems, "; "), "")
	}
	return nil
}

// cmdGC releases every allocation and host veth of this network that does not
// belong to an attachment in cni.dev/valid-attachments. It goes on past
// errors and reports them together, with the code of the first.
func cmdGC(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	// A GC without the list would release every live pod's address: refuse.
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(args.StdinData, &keys); err != nil || keys["cni.dev/valid-attachments"] == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "GC needs cni.dev/valid-attachments in the configuration", "")
	}
	valid := make(map[ipam.Owner]bool, len(cfg.Conf.ValidAttachments))
	for _, a := range cfg.Conf.ValidAttachments {
		valid[ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	ipamErr := gcAddresses(cfg, func(o ipam.Owner) bool { return valid[o] })
	vethErr := gcVeths(cfg.Conf.Name, func(cid, ifname string) bool { return valid[ipam.Owner{ContainerID: cid, IfName: ifname}] })
	switch {
	case ipamErr != nil:
		return ipamError("garbage collection: release stale addresses", errors.Join(ipamErr, vethErr))
	case vethErr != nil:
		return types.NewError(ErrDatapathFailure, "garbage collection: remove stray host veths", vethErr.Error())
	}
	return nil
}

func gcAddresses(cfg *Config, valid func(ipam.Owner) bool) error {
	alloc, err := openIPAM(cfg)
	if err != nil {
		return err
	}
	defer alloc.Close()
	_, err = alloc.GC(valid)
	return err
}

func gcVeths(network string, keep func(cid, ifname string) bool) error {
	host, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer host.Close()
	_, err = podnet.RemoveStrayVeths(host, network, keep)
	return err
}

// cmdStatus succeeds only when the configuration is valid and the IPAM store
// can be opened for writing, locked and read; otherwise it answers 50 (not
// available).
func cmdStatus(args *skel.CmdArgs) error {
	notAvailable := func(msg string, err error) error {
		return types.NewError(types.ErrPluginNotAvailable, msg, err.Error())
	}
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return notAvailable("invalid network configuration", err)
	}
	alloc, err := openIPAM(cfg)
	if err != nil {
		return notAvailable("IPAM store unusable", err)
	}
	defer alloc.Close()
	if _, err := alloc.Snapshot(); err != nil { // locks the store and reads its state
		return notAvailable("IPAM store unusable", err)
	}
	return nil
}
