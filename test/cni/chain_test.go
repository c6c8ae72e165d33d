package cni_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// flatnet-cni first in a conflist, then the reference portmap (nftables
// backend) and bandwidth plugins: prevResult flows through the chain, a host
// port on the node reaches the pod from outside the node, and CHECK and DEL
// go through all three.
func TestChainedPortmapAndBandwidth(t *testing.T) {
	n := newNode(t, "1.1.0", func(dataDir string) string {
		return flatnetConf(dataDir) +
			`, {"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": true}}` +
			`, {"type": "bandwidth", "capabilities": {"bandwidth": true}}`
	})
	outside := n.outsideHost(t)

	p := n.pod("web")
	p.PortMappings = []cniruntime.PortMapping{{HostPort: 30080, ContainerPort: 8080, Protocol: "tcp"}}
	p.Bandwidth = &cniruntime.Bandwidth{IngressRate: 100_000_000, IngressBurst: 1_000_000, EgressRate: 100_000_000, EgressBurst: 1_000_000}
	r := n.add(p)
	ip := podIP(t, r)
	if len(r.Interfaces) < 2 || r.Interfaces[1].Sandbox != p.NetNS {
		t.Fatalf("chained result lost flatnet's interfaces: %s", mustJSON(r.Interfaces))
	}
	if !strings.Contains(mustJSON(r.Interfaces), `"name":"bwp`) {
		t.Fatalf("bandwidth did not extend prevResult with its ifb device: %s", mustJSON(r.Interfaces))
	}

	seen := serveTCP(t, p.NetNS, ":8080", "hello from "+p.Name)
	got, err := probe.ReadAll(outside, "192.168.77.1:30080", 2*time.Second)
	if err != nil {
		t.Fatalf("outside -> node:30080 -> %s:8080: %v", ip, err)
	}
	if got != "hello from web" {
		t.Fatalf("got %q through the host port", got)
	}
	if src := <-seen; !strings.HasPrefix(src, "192.168.77.2:") {
		t.Errorf("pod saw client %s, want the outside host 192.168.77.2", src)
	}
	if err := n.rt.Check(context.Background(), p); err != nil {
		t.Fatalf("CHECK through the chain: %v", err)
	}
	n.del(p)
	n.del(p)
	n.assertClean()
	if _, err := probe.ReadAll(outside, "192.168.77.1:30080", 2*time.Second); err == nil {
		t.Fatal("host port still forwards after DEL")
	}
}

// outsideHost makes a namespace linked to the node by a veth pair: node
// 192.168.77.1/24, outside 192.168.77.2/24. It returns its path.
func (n *node) outsideHost(t *testing.T) string {
	t.Helper()
	name := n.name + "-outside"
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete(name) })
	outNS, err := vnetns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer outNS.Close()
	h := n.handle()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "fn-uplink"
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(outNS)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	configure := func(h *netlink.Handle, name, cidr string) {
		l := mustLink(t, h, name)
		addr, _ := netlink.ParseAddr(cidr)
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	configure(h, "fn-uplink", "192.168.77.1/24")
	configure(handleAt(t, path), "eth0", "192.168.77.2/24")
	return path
}

// serveTCP listens inside a namespace and answers one connection with reply;
// it sends the client's address on the returned channel.
func serveTCP(t *testing.T, nsPath, addr, reply string) <-chan string {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		seen <- c.RemoteAddr().String()
		_, _ = io.WriteString(c, reply)
	}()
	return seen
}
