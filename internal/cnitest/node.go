package cnitest

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/ipam"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/podnet"
)

// Network is the name of the CNI network in every node's conflist; the
// plugin keeps its IPAM store in <DataDir>/<Network>.
const Network = "fntest"

// Node is one throwaway node of a test: the network namespace <Name>-node
// (flatnet-cni makes its bridge there), a state directory, and a libcni
// runtime over a conflist with the suite's plugins, run inside the node as
// containerd runs them. Its other namespaces (pods, the outside host) are
// <Name>-<role>.
type Node struct {
	Name    string              // <suite prefix><serial>
	NS      string              // path of the node's namespace
	Dir     string              // state directory: libcni's cache in Dir/cache
	DataDir string              // the IPAM store's directory, Dir/ipam
	RT      *cniruntime.Runtime // libcni over the node's conflist
	t       *testing.T
	// attached holds the pods ADDed through Add and not DELeted through
	// Del since, by container ID.
	attached map[string]cniruntime.Pod
}

// NewNode makes a node whose conflist has cniVersion and the plugin entries
// that plugins renders for the IPAM data directory (a JSON list without its
// brackets). When the test ends, after its pods are gone (see Pod), the
// node fails the test if a host veth or an IPAM record of the plugin is
// left in it (AssertClean) or a namespace of it survives, and its
// namespace is removed.
func (s *Suite) NewNode(t *testing.T, cniVersion string, plugins func(dataDir string) string) *Node {
	t.Helper()
	s.Require(t)
	n := &Node{Name: s.NewName(), Dir: t.TempDir(), t: t, attached: map[string]cniruntime.Pod{}}
	n.DataDir = filepath.Join(n.Dir, "ipam")
	var err error
	if n.NS, err = netns.Create(n.Name + "-node"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.cleanup)
	conflist := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "plugins": [%s]}`, cniVersion, Network, plugins(n.DataDir))
	if n.RT, err = cniruntime.New(n.NS, []string{s.PluginDir}, filepath.Join(n.Dir, "cache"), []byte(conflist)); err != nil {
		t.Fatal(err)
	}
	return n
}

// cleanup is the leak check at the end of the node's test.
func (n *Node) cleanup() {
	for _, err := range n.leaks() {
		n.t.Error(err)
	}
	if err := netns.Delete(n.Name + "-node"); err != nil {
		n.t.Error(err)
	}
	if left, _ := netns.List(n.Name + "-"); len(left) > 0 {
		n.t.Errorf("network namespaces left behind: %v", left)
		for _, name := range left {
			_ = netns.Delete(name)
		}
	}
}

// Namespace makes the namespace <Name>-<role>, removed when the test ends,
// and returns its path.
func (n *Node) Namespace(role string) string {
	n.t.Helper()
	name := n.Name + "-" + role
	path, err := netns.Create(name)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		if err := netns.Delete(name); err != nil {
			n.t.Error(err)
		}
	})
	return path
}

// Pod makes the namespace of pod name and returns its sandbox: container
// ID ctr-<name>, Kubernetes namespace default, UID uid-<name>. When the
// test ends the pod is DELeted if it is still attached (see Add), then its
// namespace is removed.
func (n *Node) Pod(name string) cniruntime.Pod {
	n.t.Helper()
	p := cniruntime.Pod{ID: "ctr-" + name, NetNS: n.Namespace(name), Namespace: "default", Name: name, UID: "uid-" + name}
	n.t.Cleanup(func() {
		if a, ok := n.attached[p.ID]; ok {
			if err := n.RT.Del(context.Background(), a); err != nil {
				n.t.Errorf("DEL %s at the end of the test: %v", p.Name, err)
			}
			delete(n.attached, p.ID)
		}
	})
	return p
}

// Add attaches p through libcni (CNI ADD) and returns the result; an error
// fails the test.
func (n *Node) Add(p cniruntime.Pod) *current.Result {
	n.t.Helper()
	res, err := n.RT.Add(context.Background(), p)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", p.Name, err)
	}
	n.attached[p.ID] = p
	r, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatal(err)
	}
	return r
}

// AddPod makes pod name and attaches it.
func (n *Node) AddPod(name string) (cniruntime.Pod, *current.Result) {
	n.t.Helper()
	p := n.Pod(name)
	return p, n.Add(p)
}

// Del detaches p through libcni (CNI DEL); an error fails the test.
func (n *Node) Del(p cniruntime.Pod) {
	n.t.Helper()
	if err := n.RT.Del(context.Background(), p); err != nil {
		n.t.Fatalf("DEL %s: %v", p.Name, err)
	}
	delete(n.attached, p.ID)
}

// Handle is a netlink handle on the node's namespace.
func (n *Node) Handle() *netlink.Handle {
	n.t.Helper()
	return HandleAt(n.t, n.NS)
}

// HandleAt is a netlink handle on the namespace at path, closed when the
// test ends.
func HandleAt(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := netns.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// PluginVeths lists the host veths of flatnet-cni in the node (the links
// whose alias the plugin wrote).
func (n *Node) PluginVeths() []string {
	n.t.Helper()
	v, err := n.pluginVeths()
	if err != nil {
		n.t.Fatal(err)
	}
	return v
}

// Records lists the claims of the IPAM store as "address owner".
func (n *Node) Records() []string {
	n.t.Helper()
	r, err := n.records()
	if err != nil {
		n.t.Fatal(err)
	}
	return r
}

// AssertClean fails the test when a host veth or an IPAM record of the
// plugin remains in the node.
func (n *Node) AssertClean() {
	n.t.Helper()
	for _, err := range n.leaks() {
		n.t.Error(err)
	}
}

// leaks says what of the plugin remains in the node, or why it cannot tell.
func (n *Node) leaks() []error {
	var errs []error
	if v, err := n.pluginVeths(); err != nil {
		errs = append(errs, fmt.Errorf("list the host veths: %w", err))
	} else if len(v) > 0 {
		errs = append(errs, fmt.Errorf("host veths left behind: %v", v))
	}
	if r, err := n.records(); err != nil {
		errs = append(errs, fmt.Errorf("read the IPAM store: %w", err))
	} else if len(r) > 0 {
		errs = append(errs, fmt.Errorf("IPAM records left behind: %v", r))
	}
	return errs
}

func (n *Node) pluginVeths() ([]string, error) {
	h, err := netns.Handle(n.NS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range links {
		if _, _, _, ok := podnet.ParseAlias(l.Attrs().Alias); ok {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

func (n *Node) records() ([]string, error) {
	a, err := ipam.New(ipam.Config{Network: Network, DataDir: n.DataDir})
	if err != nil {
		return nil, err
	}
	defer a.Close()
	st, err := a.Snapshot()
	if err != nil {
		return nil, err
	}
	var out []string
	for addr, c := range st.Claims {
		out = append(out, addr.String()+" "+c.Owner.String())
	}
	return out, nil
}

// Uplink is one IP family of the link between a node and its outside host:
// the node's address and the outside host's, with their prefix lengths.
type Uplink struct{ Node, Outside netip.Prefix }

// Outside makes the outside host, the namespace <Name>-out, linked to the
// node by a veth pair ("uplink" in the node, "eth0" outside, both up) with
// an address of each Uplink at each end (IPv6 ones without duplicate
// address detection, so usable at once); each side's default route points
// at the other, as a node's points at its network. It returns its path.
func (n *Node) Outside(links ...Uplink) string {
	n.t.Helper()
	path := n.Namespace("out")
	if err := linkOutside(n.NS, path, links); err != nil {
		n.t.Fatalf("outside host: %v", err)
	}
	return path
}

func linkOutside(nodePath, outPath string, links []Uplink) error {
	out, err := vnetns.GetFromPath(outPath)
	if err != nil {
		return err
	}
	defer out.Close()
	nodeH, err := netns.Handle(nodePath)
	if err != nil {
		return err
	}
	defer nodeH.Close()
	outH, err := netns.Handle(outPath)
	if err != nil {
		return err
	}
	defer outH.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "uplink"
	if err := nodeH.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(out)}); err != nil {
		return err
	}
	for _, l := range links {
		if err := configure(nodeH, "uplink", l.Node); err != nil {
			return err
		}
		if err := configure(outH, "eth0", l.Outside); err != nil {
			return err
		}
	}
	for _, l := range links {
		if err := defaultRoute(outH, "eth0", l.Node.Addr()); err != nil {
			return err
		}
		if err := defaultRoute(nodeH, "uplink", l.Outside.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// configure puts addr on link name and brings the link up.
func configure(h *netlink.Handle, name string, addr netip.Prefix) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(addr.String())
	if err != nil {
		return err
	}
	if addr.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("%s on %s: %w", addr, name, err)
	}
	return h.LinkSetUp(l)
}

func defaultRoute(h *netlink.Handle, dev string, gw netip.Addr) error {
	l, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return nil
}
