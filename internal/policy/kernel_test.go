package policy_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// kernelPods are the pods of the kernel test: role → namespace, name,
// host number of its addresses.
var kernelPods = []struct {
	role, ns, name string
	n              int
}{{"xa", "x", "a", 10}, {"xb", "x", "b", 11}, {"ya", "y", "a", 12}}

func kernelPodObjects(relabel map[string]string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range kernelPods {
		o := pod(p.ns, p.name, "node", fmt.Sprintf("10.244.1.%d", p.n), fmt.Sprintf("fd00:244:1::%d", p.n))
		if l, ok := relabel[p.role]; ok {
			o.Labels["pod"] = l
		}
		out = append(out, o)
	}
	return out
}

// addrOf is the address of role dst as src reaches it in family fam (the
// node as its pods' gateway; the node as a source is its gateway to pods).
func addrOf(role string, fam nft.Family) netip.Addr {
	v4 := fam == nft.IPv4
	pick := func(a, b string) netip.Addr {
		if v4 {
			return netip.MustParseAddr(a)
		}
		return netip.MustParseAddr(b)
	}
	switch role {
	case "node":
		return pick("10.244.1.1", "fd00:244:1::1")
	case "out":
		return pick("192.168.88.2", "fd00:88::2")
	case "svc":
		return pick("10.96.0.10", "fd00:96::10")
	}
	for _, p := range kernelPods {
		if p.role == role {
			return pick(fmt.Sprintf("10.244.1.%d", p.n), fmt.Sprintf("fd00:244:1::%d", p.n))
		}
	}
	panic(role)
}

// Real packets through the tables an engine writes in a node namespace:
// three pods on the bridge, the node itself and an outside host; TCP 80,
// TCP 81 and UDP 80 between every two of them (one a pod) over IPv4 and
// IPv6, and to a Service address DNATed to pod x/a's port 80 (judged by
// the pod it reaches), against the evaluator, under a few policies and
// after they, and a pod's labels, change (a partial sync).
func TestPoliciesInTheKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: its denied probes wait for timeouts (15 s)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, veth, a bridge, nftables)")
	}
	if _, err := os.Stat("/proc/sys/net/bridge"); err != nil {
		t.Skip("needs br_netfilter (bridged pod traffic through the IP hooks)")
	}
	prefix := fmt.Sprintf("fn-t%d-pol-", os.Getpid())
	t.Cleanup(func() {
		if left, _ := netns.List(prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	k := newKernelNode(t)
	for _, p := range kernelPods {
		k.addPod(p.role, p.n)
	}
	k.service()
	src := &mutableSource{}
	var engines []*policy.Engine
	for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
		var tables nft.Tables
		if err := netns.Do(k.ns["node"], func() (err error) { tables, err = nft.New(fam, policy.Table); return err }); err != nil {
			t.Fatal(err)
		}
		engines = append(engines, policy.NewEngine(fam, "node", tables, src, quiet))
	}
	for _, ph := range kernelPhases() {
		src.c = &policy.Cluster{Policies: ph.policies, Pods: kernelPodObjects(ph.relabel), Namespaces: namespaces()}
		for _, e := range engines {
			if err := netns.Do(k.ns["node"], func() error { return e.Sync(context.Background()) }); err != nil {
				t.Fatalf("%s: %v", ph.name, err)
			}
		}
		k.compare(t, ph.name, src.c)
	}
}

// service DNATs TCP and UDP to the Service address (10.96.0.10,
// fd00:96::10) to port 80 of pod x/a in the node's prerouting, as the
// service proxy would.
func (k *kernelNode) service() {
	k.t.Helper()
	err := netns.Do(k.ns["node"], func() error {
		for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
			tables, err := nft.New(fam, "fn-test-service")
			if err != nil {
				return err
			}
			tx := tables.NewTx()
			tx.Add(&knftables.Table{})
			tx.Add(&knftables.Chain{Name: "pre", Type: knftables.PtrTo(knftables.NATType),
				Hook: knftables.PtrTo(knftables.PreroutingHook), Priority: knftables.PtrTo(knftables.DNATPriority)})
			backend := netip.AddrPortFrom(addrOf("xa", fam), 80).String()
			for _, proto := range []string{"tcp", "udp"} {
				tx.Add(&knftables.Rule{Chain: "pre", Rule: fam.IP() + " daddr " + addrOf("svc", fam).String() + " meta l4proto " + proto + " dnat to " + backend})
			}
			if err := tables.Run(context.Background(), tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		k.t.Fatal(err)
	}
}

type kernelPhase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	relabel  map[string]string
}

func kernelPhases() []kernelPhase {
	deny := np("x", "deny", spec{PolicyTypes: bothTypes, Egress: []out{
		{To: []peer{podPeer(labels("pod", "a"))}, Ports: []port{num(tcp, 81)}},
		{To: []peer{block("192.168.88.0/24", "192.168.88.3/32")}, Ports: []port{num(tcp, 80)}},
		{To: []peer{block("fd00:88::/64")}, Ports: []port{num(udp, 80)}}}})
	fromY := np("x", "a-from-y", spec{PodSelector: labels("pod", "a"), Ingress: []in{
		{From: []peer{nsPeer(labels("ns", "y"))}, Ports: []port{named(tcp, "http"), num(udp, 80)}}}})
	yOut := np("y", "out", spec{PodSelector: labels("pod", "a"), PolicyTypes: egressOnly, Egress: []out{
		{To: []peer{nsPeer(labels("ns", "x"))}}}})
	fromBlock := np("x", "b-from-block", spec{PodSelector: labels("pod", "b"), Ingress: []in{
		{From: []peer{block("10.244.1.0/24", "10.244.1.12/32"), block("fd00:244:1::/64")}, Ports: []port{span(tcp, 80, 81)}}}})
	return []kernelPhase{
		{"no policies", nil, nil},
		{"isolated x, y/a egress to x", []*networkingv1.NetworkPolicy{deny, fromY, yOut}, nil},
		{"a policy replaced, y/a relabelled", []*networkingv1.NetworkPolicy{deny, yOut, fromBlock}, map[string]string{"ya": "c"}},
	}
}

type kernelProbe struct {
	src, dst string
	fam      nft.Family
	proto    string
	port     int
	got      bool
}

// compare probes every pair in parallel (a handful of workers: denied
// probes mostly wait) and reports where the kernel and the evaluator differ.
func (k *kernelNode) compare(t *testing.T, phase string, c *policy.Cluster) {
	t.Helper()
	eval := &evaluator{pods: c.Pods, namespaces: c.Namespaces, policies: c.Policies,
		nodeAddrs: map[string][]netip.Addr{"node": addrs("10.244.1.1", "fd00:244:1::1", "192.168.88.1", "fd00:88::1")}}
	roles := []string{"node", "out", "xa", "xb", "ya", "svc"}
	var probes []*kernelProbe
	for _, s := range roles {
		for _, d := range roles {
			if s == d || s == "svc" || (s == "node" || s == "out") && (d == "node" || d == "out") {
				continue
			}
			if d == "svc" && (s == "node" || s == "xa") {
				continue // the node has no route to it; x/a would need hairpin masquerade
			}
			for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
				for _, pp := range []struct {
					proto string
					port  int
				}{{"tcp", 80}, {"tcp", 81}, {"udp", 80}} {
					if d != "svc" || pp.port == 80 {
						probes = append(probes, &kernelProbe{src: s, dst: d, fam: fam, proto: pp.proto, port: pp.port})
					}
				}
			}
		}
	}
	work := make(chan *kernelProbe)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				p.got = k.reach(p.src, addrOf(p.dst, p.fam), p.proto, p.port)
			}
		}()
	}
	for _, p := range probes {
		work <- p
	}
	close(work)
	wg.Wait()
	var diffs []string
	allowed := 0
	for _, p := range probes {
		dst := p.dst
		if dst == "svc" {
			dst = "xa" // judged after DNAT
		}
		want := eval.allowed(packet{addrOf(p.src, p.fam), addrOf(dst, p.fam), corev1.Protocol(strings.ToUpper(p.proto)), p.port})
		if p.got {
			allowed++
		}
		if want != p.got {
			diffs = append(diffs, fmt.Sprintf("  %s -> %s %s %s/%d: evaluator %v, kernel %v", p.src, p.dst, p.fam, p.proto, p.port, want, p.got))
		}
	}
	if len(diffs) > 0 {
		t.Errorf("%s: %d of %d probes differ:\n%s", phase, len(diffs), len(probes), strings.Join(diffs, "\n"))
	}
	t.Logf("%s: %d of %d probes answered", phase, allowed, len(probes))
}
