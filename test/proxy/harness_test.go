// Package proxy_test drives the service proxy with real packets: a node
// namespace with pods wired by flatnet-cni and an outside host linked to it
// (internal/cnitest's Node, with its leak check), Services and
// EndpointSlices handed to the proxier, its ruleset applied with the real
// nft, and connections made from pods, the node and the outside. Needs
// root; skips with the reason otherwise.
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
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/flatnet-io/flatnet/internal/cnitest"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/probe"
	"github.com/flatnet-io/flatnet/internal/proxy"
	"github.com/flatnet-io/flatnet/internal/workload"
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

// env is one node with pods, an outside host, and a proxier per family.
type env struct {
	t        *testing.T
	n        *cnitest.Node
	node     string // namespace path
	outside  string
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
	n := suite.NewNode(t, "1.1.0", func(dataDir string) string {
		return fmt.Sprintf(`{"type": "flatnet-cni", "bridge": "fn0", "ipam": {"ranges": [[{"subnet": %q}], [{"subnet": %q}]], "dataDir": %q}}`, podCIDR, podCIDR6, dataDir)
	})
	e := &env{t: t, n: n, node: n.NS, pods: map[string]*pod{}, zone: zone, events: &eventLog{}}
	e.outside = n.Outside(
		cnitest.Uplink{Node: netip.MustParsePrefix(nodeUplinkIP + "/24"), Outside: netip.MustParsePrefix(outsideIP + "/24")},
		cnitest.Uplink{Node: netip.MustParsePrefix(nodeUplinkIP6 + "/64"), Outside: netip.MustParsePrefix(outsideIP6 + "/64")})
	e.startProxiers()
	t.Cleanup(e.stopProxiers)
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

// addPod wires a pod and starts a TCP server on 8080 and a UDP server on
// 8081 that answer "<pod> <client address>", and on 8082 a TCP server that
// answers each line with "<pod> <line>" as long as the connection lasts.
func (e *env) addPod(name string) *pod {
	e.t.Helper()
	sandbox, r := e.n.AddPod(name)
	path := sandbox.NetNS
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
	err := netns.Do(path, func() (err error) {
		if ln, err = net.Listen("tcp", ":8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":8081")
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.serveLines(path, name)
	go func() {
		_ = workload.Serve(e.t.Context(), ln, func(c net.Conn) {
			_, _ = io.WriteString(c, name+" "+c.RemoteAddr().String())
			c.Close()
		})
	}()
	go func() {
		_ = workload.ServePackets(e.t.Context(), pc, func(_ []byte, from net.Addr) ([]byte, bool) {
			return []byte(name + " " + from.String()), true
		})
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

// serve hands the IPv4 proxier Service s and its EndpointSlice with eps
// (see slice), then syncs.
func (e *env) serve(s *corev1.Service, eps ...ep) {
	e.t.Helper()
	e.proxier.UpdateService(s)
	e.proxier.UpdateSlice(slice(s.Name, eps...))
	e.sync()
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
	go func() {
		_ = workload.Serve(e.t.Context(), ln, func(c net.Conn) { go answerLines(c, name) })
	}()
}

// answerLines answers each line on c with "<name> <line>" until c ends.
func answerLines(c net.Conn, name string) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintf(c, "%s %s\n", name, sc.Text()); err != nil {
			return
		}
	}
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
