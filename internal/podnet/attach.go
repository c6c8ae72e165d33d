package podnet

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netconv"
)

// Route is a route to set in the pod; an invalid Via means on-link.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// Pod describes one attachment to make.
type Pod struct {
	Network     string
	ContainerID string
	IfName      string
	MTU         int
	MAC         net.HardwareAddr // optional: the "mac" capability
	Addresses   []netip.Prefix
	Routes      []Route
	Hairpin     bool
}

// Attached is what Attach made, for the CNI result.
type Attached struct {
	HostVeth string
	HostMAC  net.HardwareAddr
	PodMAC   net.HardwareAddr
}

// InterfaceExistsError says the pod already has an interface of that name
// that is not a leftover of this attachment.
type InterfaceExistsError struct{ Name string }

func (e *InterfaceExistsError) Error() string {
	return fmt.Sprintf("interface %s already exists in the pod's network namespace", e.Name)
}

// HostVethName is the deterministic name of an attachment's host-side veth.
func HostVethName(network, containerID, ifname string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifname))
	return "fn" + hex.EncodeToString(sum[:])[:11]
}

const aliasPrefix = "flatnet-cni "

// Alias is the IFLA_IFALIAS of an attachment's host veth.
func Alias(network, containerID, ifname string) string {
	return aliasPrefix + network + " " + containerID + " " + ifname
}

// ParseAlias splits an alias written by Alias; ok is false for other links.
func ParseAlias(alias string) (network, containerID, ifname string, ok bool) {
	f := strings.Fields(alias)
	if len(f) != 4 || f[0]+" " != aliasPrefix {
		return "", "", "", false
	}
	return f[1], f[2], f[3], true
}

// Attach creates the veth pair of p with the pod end inside podNS, enslaves
// the host end to br and configures the pod end. On error it removes what it
// made. host and pod are netlink handles on the node's and the pod's namespaces.
func Attach(host, pod *netlink.Handle, podNS netns.NsHandle, br netlink.Link, p Pod) (*Attached, error) {
	hostName := HostVethName(p.Network, p.ContainerID, p.IfName)
	alias := Alias(p.Network, p.ContainerID, p.IfName)
	if err := removeLeftover(host, hostName, alias); err != nil {
		return nil, err
	}
	if _, err := pod.LinkByName(p.IfName); err == nil {
		return nil, &InterfaceExistsError{Name: p.IfName}
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = p.MTU
	attrs.Flags = net.FlagUp
	attrs.HardwareAddr = randomMAC()
	attrs.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         p.IfName,
		PeerNamespace:    netlink.NsFd(podNS),
		PeerHardwareAddr: p.MAC,
	}
	if err := host.LinkAdd(veth); err != nil {
		if veth.Index != 0 || errors.Is(err, unix.EEXIST) {
			_ = deleteByName(host, hostName)
		}
		return nil, fmt.Errorf("create veth pair %s/%s: %w", hostName, p.IfName, err)
	}
	out, err := configure(host, pod, veth, p)
	if err != nil {
		_ = deleteByName(host, hostName)
		return nil, err
	}
	return out, nil
}

func configure(host, pod *netlink.Handle, veth *netlink.Veth, p Pod) (*Attached, error) {
	// The kernel ignores IFLA_IFALIAS on creation, so the alias is a second step.
	if err := host.LinkSetAlias(veth, Alias(p.Network, p.ContainerID, p.IfName)); err != nil {
		return nil, fmt.Errorf("set alias of %s: %w", veth.Name, err)
	}
	if p.Hairpin {
		if err := host.LinkSetHairpin(veth, true); err != nil {
			return nil, fmt.Errorf("set hairpin on %s: %w", veth.Name, err)
		}
	}
	link, err := pod.LinkByName(p.IfName)
	if err != nil {
		return nil, fmt.Errorf("find %s in the pod: %w", p.IfName, err)
	}
	if err := pod.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", p.IfName, err)
	}
	for _, a := range p.Addresses {
		addr := &netlink.Addr{IPNet: netconv.IPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // the address is ours alone: do not wait for DAD
		}
		if err := pod.AddrAdd(link, addr); err != nil {
			return nil, fmt.Errorf("add %s to %s: %w", a, p.IfName, err)
		}
	}
	for _, r := range p.Routes {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: netconv.IPNet(r.Dst)}
		if r.Via.IsValid() {
			route.Gw = r.Via.AsSlice()
		} else {
			route.Scope = netlink.SCOPE_LINK
		}
		if err := pod.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add route %s via %s: %w", r.Dst, r.Via, err)
		}
	}
	return &Attached{HostVeth: veth.Name, HostMAC: veth.HardwareAddr, PodMAC: link.Attrs().HardwareAddr}, nil
}

// removeLeftover deletes a host veth of this name left by an earlier ADD of
// the same attachment that did not finish (its peer in the pod goes with it).
func removeLeftover(host *netlink.Handle, name, alias string) error {
	link, err := host.LinkByName(name)
	if err != nil {
		return nil
	}
	// An empty alias is our own veth from an ADD that died before setting it.
	if a := link.Attrs().Alias; a != alias && a != "" {
		return fmt.Errorf("host interface %s exists and belongs to %q, not to this attachment", name, link.Attrs().Alias)
	}
	if err := host.LinkDel(link); err != nil {
		return fmt.Errorf("remove leftover %s: %w", name, err)
	}
	return nil
}

// Detach removes an attachment's veth pair by deleting its host end (the
// pod end goes with it). A pod interface the plugin did not make is never
// touched, and a missing link is not an error.
func Detach(host *netlink.Handle, network, containerID, ifname string) error {
	name := HostVethName(network, containerID, ifname)
	link, err := host.LinkByName(name)
	if err != nil {
		return nil
	}
	if a := link.Attrs().Alias; a != Alias(network, containerID, ifname) && a != "" {
		return fmt.Errorf("host interface %s belongs to %q, not to this attachment", name, a)
	}
	if err := host.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// RemoveStrayVeths deletes the host veths of network whose owner keep
// rejects, and returns their names. Links of other networks or plugins are
// never touched.
func RemoveStrayVeths(host *netlink.Handle, network string, keep func(containerID, ifname string) bool) ([]string, error) {
	links, err := host.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var removed []string
	var errs []error
	for _, l := range links {
		if _, isVeth := l.(*netlink.Veth); !isVeth {
			continue
		}
		nw, cid, ifname, ok := ParseAlias(l.Attrs().Alias)
		if !ok || nw != network || keep(cid, ifname) {
			continue
		}
		if err := host.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stray %s: %w", l.Attrs().Name, err))
			continue
		}
		removed = append(removed, l.Attrs().Name)
	}
	return removed, errors.Join(errs...)
}

func deleteByName(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := h.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func isNotFound(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac)
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}
