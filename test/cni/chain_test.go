package cni_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/cnitest"
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
	outside := n.Outside(cnitest.Uplink{Node: netip.MustParsePrefix("192.168.77.1/24"), Outside: netip.MustParsePrefix("192.168.77.2/24")})

	p := n.Pod("web")
	p.PortMappings = []cniruntime.PortMapping{{HostPort: 30080, ContainerPort: 8080, Protocol: "tcp"}}
	p.Bandwidth = &cniruntime.Bandwidth{IngressRate: 100_000_000, IngressBurst: 1_000_000, EgressRate: 100_000_000, EgressBurst: 1_000_000}
	r := n.Add(p)
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
	if err := n.RT.Check(context.Background(), p); err != nil {
		t.Fatalf("CHECK through the chain: %v", err)
	}
	n.Del(p)
	n.Del(p)
	n.AssertClean()
	if _, err := probe.ReadAll(outside, "192.168.77.1:30080", 2*time.Second); err == nil {
		t.Fatal("host port still forwards after DEL")
	}
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
