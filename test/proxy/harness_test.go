// Package proxy_test drives the service proxy with real packets: a node
// namespace with pods wired by flatnet-cni, an outside host linked to it,
// Services and EndpointSlices handed to the proxier, its ruleset applied with
// the real nft, and connections made from pods, the node and the outside.
// Needs root; skips with the reason otherwise.
package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/flatnet-io/flatnet/internal/cniruntime"
	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/probe"
	"github.com/flatnet-io/flatnet/internal/proxy"
)

// suite builds flatnet-cni and fails the run if a namespace of it is left.
var suite = cnitest.NewSuite("px")

// The node is dual-stack: IPv4 and IPv6 on the uplink and for pods, and a
// proxier per family.
const (
	nodeUplinkIP  = "192.168.88.1"
	outsideIP     = "192.168.88.2"
	clusterCIDR   = "10.244.0.0/16"
	podCIDR       = "10.244.1.0/24"
	nodeUplinkIP6 = "fd00:88::1"
	outsideIP6    = "fd00:88::2"
	clusterCIDR6  = "fd00:244::/48"
	podCIDR6      = "fd00:244:0:1::/64"
)

func TestMain(m *testing.M) { os.Exit(suite.Main(m)) }

// env is one node with pods, an outside host, and a proxier.
type env struct {
	t        *testing.T
	name     string
	node     string // namespace path
	outside  string
	rt       *cniruntime.Runtime
	proxier  *proxy.Proxier // IPv4
	proxier6 *proxy.Proxier // IPv6
	pods     map[string]*pod
	zone     string
	events   *eventLog
}

type pod struct {
	name string
	ns   string
	ip   string // IPv4
	ip6  string
}

// newEnv makes the node (bridge via flatnet-cni, uplink to the outside
// host) and a proxier for it; zone is the node's topology zone.
func newEnv(t *testing.T, zone string) *env {
	t.Helper()
	suite.Require(t)
	e := &env{t: t, name: suite.NewName(), pods: map[string]*pod{}, zone: zone, events: &eventLog{}}
	e.node = e.mkns("node")
	e.outside = e.mkns("out")
	e.link()
	dir := t.TempDir()
	conflist := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"fntest","plugins":[{"type":"flatnet-cni","bridge":"fn0","ipam":{"ranges":[[{"subnet":%q}],[{"subnet":%q}]],"dataDir":%q}}]}`, podCIDR, podCIDR6, dir+"/ipam")
	rt, err := cniruntime.New(e.node, []string{suite.PluginDir}, filepath.Join(dir, "cache"), []byte(conflist))
	if err != nil {
		t.Fatal(err)
	}
	e.rt = rt
	e.startProxiers()
	t.Cleanup(func() {
		e.stopProxiers()
		for _, p := range e.pods {
			_ = e.rt.Del(context.Background(), cniruntime.Pod{ID: p.name, NetNS: p.ns, IfName: "eth0"})
		}
	})
	return e
}

// startProxiers makes a proxier per family for the node, as flatnetd
// starts: with whatever its tables already hold.
func (e *env) startProxiers() {
	e.t.Helper()
	newProxier := func(fam proxy.Family, cidr string) (p *proxy.Proxier) {
		err := netns.Do(e.node, func() error {
			tables, err := nft.New(fam, proxy.Table)
			if err != nil {
				return err
			}
			cfg := proxy.Config{Family: fam, NodeName: "node-1", NodeZone: e.zone, ClusterCIDR: netip.MustParsePrefix(cidr), Events: e.events}
			p = proxy.New(cfg, tables, nsConntrack{e.node, fam}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			return nil
		})
		if err != nil {
			e.t.Fatal(err)
		}
		return p
	}
	e.proxier, e.proxier6 = newProxier(proxy.IPv4, clusterCIDR), newProxier(proxy.IPv6, clusterCIDR6)
}

func (e *env) stopProxiers() {
	e.proxier.Close()
	e.proxier6.Close()
}

func (e *env) mkns(role string) string {
	e.t.Helper()
	name := e.name + "-" + role
	path, err := netns.Create(name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = netns.Delete(name) })
	return path
}

// link wires node and outside host: 192.168.88.1 <-> .2; the outside host
// routes the cluster's Service and external ranges to the node.
func (e *env) link() {
	e.t.Helper()
	out, err := vnetns.GetFromPath(e.outside)
	if err != nil {
		e.t.Fatal(err)
	}
	defer out.Close()
	nodeH, outH := e.handle(e.node), e.handle(e.outside)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "uplink"
	if err := nodeH.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(out)}); err != nil {
		e.t.Fatal(err)
	}
	for _, c := range []struct {
		h    *netlink.Handle
		name string
		cidr string
	}{{nodeH, "uplink", nodeUplinkIP + "/24"}, {outH, "eth0", outsideIP + "/24"}, {nodeH, "uplink", nodeUplinkIP6 + "/64"}, {outH, "eth0", outsideIP6 + "/64"}} {
		l, err := c.h.LinkByName(c.name)
		if err != nil {
			e.t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(c.cidr)
		a.Flags = unix.IFA_F_NODAD // IPv6: usable at once
		if err := c.h.AddrAdd(l, a); err != nil {
			e.t.Fatal(err)
		}
		if err := c.h.LinkSetUp(l); err != nil {
			e.t.Fatal(err)
		}
	}
	// Each side's default route points at the other, as a node's points at
	// its network: Service IPs have no route of their own.
	for _, r := range []struct {
		h   *netlink.Handle
		dev string
		gw  string
	}{{outH, "eth0", nodeUplinkIP}, {nodeH, "uplink", outsideIP}, {outH, "eth0", nodeUplinkIP6}, {nodeH, "uplink", outsideIP6}} {
		l, _ := r.h.LinkByName(r.dev)
		if err := r.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(r.gw)}); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) handle(path string) *netlink.Handle {
	e.t.Helper()
	h, err := netns.Handle(path)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(h.Close)
	return h
}

// addPod wires a pod and starts a TCP server on 8080 and a UDP server on
// 8081 that answer "<pod> <client address>", and on 8082 a TCP server that
// answers each line with "<pod> <line>" as long as the connection lasts.
func (e *env) addPod(name string) *pod {
	e.t.Helper()
	path := e.mkns(name)
	res, err := e.rt.Add(context.Background(), cniruntime.Pod{ID: name, NetNS: path, IfName: "eth0", Namespace: "ns", Name: name})
	if err != nil {
		e.t.Fatal(err)
	}
	r, _ := current.NewResultFromResult(res)
	p := &pod{name: name, ns: path}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() != nil {
			p.ip = ip.Address.IP.String()
		} else {
			p.ip6 = ip.Address.IP.String()
		}
	}
	e.pods[name] = p
	var ln net.Listener
	var pc net.PacketConn
	err = netns.Do(path, func() (err error) {
		if ln, err = net.Listen("tcp", ":8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":8081")
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ln.Close(); pc.Close() })
	e.serveLines(path, name)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name+" "+c.RemoteAddr().String())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			_, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name+" "+addr.String()), addr)
		}
	}()
	return p
}

// sync programs the proxier's current state into the node's nftables.
func (e *env) sync() {
	e.t.Helper()
	for _, p := range []*proxy.Proxier{e.proxier, e.proxier6} {
		if err := netns.Do(e.node, func() error { return p.Sync(context.Background()) }); err != nil {
			e.t.Fatalf("sync: %v", err)
		}
	}
}

// tcp connects from a namespace and returns "<pod> <client address>".
func tcp(nsPath, addr string) (string, error) { return probe.ReadAll(nsPath, addr, 2*time.Second) }

// backendOf is the pod that answered.
func backendOf(reply string) string { return strings.Fields(reply + " ")[0] }

// seenClient is the client address the backend saw.
func seenClient(reply string) string {
	f := strings.Fields(reply)
	if len(f) < 2 {
		return ""
	}
	h, _, _ := net.SplitHostPort(f[1])
	return h
}

// nsConntrack runs the kernel conntrack cleanup inside the node namespace.
type nsConntrack struct {
	node string
	fam  proxy.Family
}

func (c nsConntrack) Delete(flows []proxy.Flow) error {
	return netns.Do(c.node, func() error { return proxy.KernelConntrack{Family: c.fam}.Delete(flows) })
}

// udpSocket opens a UDP socket from a pod to addr; ask sends one datagram
// (retrying twice) and returns the pod that answered, "" for none.
func udpSocket(t *testing.T, nsPath, addr string) (ask func() string) {
	t.Helper()
	conn, err := probe.Dial(nsPath, "udp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return func() string {
		buf := make([]byte, 256)
		for range 3 {
			_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := conn.Write([]byte("x")); err != nil {
				continue
			}
			if n, err := conn.Read(buf); err == nil {
				return backendOf(string(buf[:n]))
			}
		}
		return ""
	}
}

// serveLines answers each line on TCP 8082 of a pod with "<pod> <line>".
func (e *env) serveLines(nsPath, name string) {
	e.t.Helper()
	var ln net.Listener
	if err := netns.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp", ":8082"); return err }); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", name, sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// eventLog records the Events a proxier sends.
type eventLog struct {
	mu     sync.Mutex
	events []string // "<namespace>/<name> <type> <reason>: <message>"
}

func (l *eventLog) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	m, _ := meta.Accessor(obj)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf("%s/%s %s %s: %s", m.GetNamespace(), m.GetName(), typ, reason, fmt.Sprintf(format, args...)))
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}
