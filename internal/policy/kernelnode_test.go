package policy_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/podnet"
	"github.com/flatnet-io/flatnet/internal/sysctl"
)

// kernelNode is one node in network namespaces, as the lab makes them:
// a node namespace with bridge fn0 (pod gateways 10.244.1.1, fd00:244:1::1)
// and bridged traffic sent through the IP hooks (as flatnetd sets it);
// pods attached to it by package podnet (the CNI plugin's own code: veth,
// hairpin, addresses, routes); an outside host on an uplink
// (192.168.88.2, fd00:88::2; the node is .1 and ::1). Every namespace is
// named fn-t<pid>-pol-<role> and removed when the test ends. Every one of
// them serves TCP 80, TCP 81 and UDP 80, answering with its name.
type kernelNode struct {
	t    *testing.T
	ns   map[string]string // role → namespace path: "node", "out", pods
	host *netlink.Handle
	br   netlink.Link
}

func newKernelNode(t *testing.T) *kernelNode {
	t.Helper()
	k := &kernelNode{t: t, ns: map[string]string{}}
	node := k.mkns("node")
	k.host = k.handle(node)
	br, err := podnet.EnsureBridge(k.host, podnet.Bridge{Name: "fn0", MTU: 1500,
		Gateways: []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24"), netip.MustParsePrefix("fd00:244:1::1/64")}})
	if err != nil {
		t.Fatal(err)
	}
	k.br = br
	for _, s := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding",
		"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"} {
		if err := sysctl.EnsureIn(node, s, "1"); err != nil {
			t.Fatal(err)
		}
	}
	k.uplink()
	k.serve("node")
	k.serve("out")
	return k
}

func (k *kernelNode) mkns(role string) string {
	k.t.Helper()
	name := fmt.Sprintf("fn-t%d-pol-%s", os.Getpid(), role)
	path, err := netns.Create(name)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { _ = netns.Delete(name) })
	k.ns[role] = path
	return path
}

func (k *kernelNode) handle(path string) *netlink.Handle {
	k.t.Helper()
	h, err := netns.Handle(path)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(h.Close)
	return h
}

// addPod attaches a pod with addresses 10.244.1.<n> and fd00:244:1::<n>.
func (k *kernelNode) addPod(role string, n int) {
	k.t.Helper()
	path := k.mkns(role)
	podNS, err := vnetns.GetFromPath(path)
	if err != nil {
		k.t.Fatal(err)
	}
	defer podNS.Close()
	p := podnet.Pod{Network: "fntest", ContainerID: role, IfName: "eth0", MTU: 1500, Hairpin: true,
		Addresses: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.244.1.%d/24", n)), netip.MustParsePrefix(fmt.Sprintf("fd00:244:1::%d/64", n))},
		Routes: []podnet.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("10.244.1.1")},
			{Dst: netip.MustParsePrefix("::/0"), Via: netip.MustParseAddr("fd00:244:1::1")}}}
	if _, err := podnet.Attach(k.host, k.handle(path), podNS, k.br, p); err != nil {
		k.t.Fatal(err)
	}
	k.serve(role)
}

// uplink links the node to the outside host; each routes through the
// other (no NAT: the outside sees pod addresses).
func (k *kernelNode) uplink() {
	k.t.Helper()
	outPath := k.mkns("out")
	out, err := vnetns.GetFromPath(outPath)
	if err != nil {
		k.t.Fatal(err)
	}
	defer out.Close()
	outH := k.handle(outPath)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "uplink"
	if err := k.host.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(out)}); err != nil {
		k.t.Fatal(err)
	}
	for _, c := range []struct {
		h         *netlink.Handle
		dev, cidr string
		gw        string
	}{{k.host, "uplink", "192.168.88.1/24", ""}, {k.host, "uplink", "fd00:88::1/64", ""},
		{outH, "eth0", "192.168.88.2/24", "192.168.88.1"}, {outH, "eth0", "fd00:88::2/64", "fd00:88::1"}} {
		l, err := c.h.LinkByName(c.dev)
		if err != nil {
			k.t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(c.cidr)
		a.Flags = unix.IFA_F_NODAD
		if err := c.h.AddrAdd(l, a); err != nil {
			k.t.Fatal(err)
		}
		if err := c.h.LinkSetUp(l); err != nil {
			k.t.Fatal(err)
		}
		if c.gw != "" {
			if err := c.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(c.gw)}); err != nil {
				k.t.Fatal(err)
			}
		}
	}
}

// serve answers TCP 80 and 81 and UDP 80 in the namespace of role, over
// both families, with the role's name.
func (k *kernelNode) serve(role string) {
	k.t.Helper()
	var lns []net.Listener
	var pc net.PacketConn
	err := netns.Do(k.ns[role], func() error {
		for _, port := range []string{":80", ":81"} {
			ln, err := net.Listen("tcp", port)
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		var err error
		pc, err = net.ListenPacket("udp", ":80")
		return err
	})
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		pc.Close()
	})
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, role)
				c.Close()
			}
		}()
	}
	go func() {
		buf := make([]byte, 64)
		for {
			_, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(role), addr)
		}
	}()
}

// reach reports whether role src gets an answer from dst (a TCP connect,
// or a UDP reply, within a short timeout).
func (k *kernelNode) reach(src string, dst netip.Addr, proto string, port int) bool {
	addr := netip.AddrPortFrom(dst, uint16(port)).String()
	var c net.Conn
	err := netns.Do(k.ns[src], func() (err error) {
		c, err = net.DialTimeout(proto, addr, 700*time.Millisecond)
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	if proto == "tcp" {
		return true
	}
	buf := make([]byte, 64)
	for range 2 {
		_ = c.SetDeadline(time.Now().Add(400 * time.Millisecond))
		if _, err := c.Write([]byte("x")); err != nil {
			return false
		}
		if _, err := c.Read(buf); err == nil {
			return true
		}
	}
	return false
}
