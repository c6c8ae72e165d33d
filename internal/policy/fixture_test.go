package policy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// The fixture: two nodes, namespaces x, y, z, pods a, b, c in each (the
// upstream suite's model) spread over the nodes, dual-stack, each serving
// ports 80 and 81 over TCP, UDP and SCTP under names serve-80-tcp ...; a
// port named "http" that is 80 on pods a, 81 on pods b, absent on pods c;
// a sidecar port "metrics" (8080) on pods c and a port "early" (79) of an
// init container that is not a sidecar; a pod on the host network and a
// finished pod, both labelled pod=a, which no selector may pick.

type node struct {
	name  string
	addrs []netip.Addr // InternalIPs and bridge gateways, both families
}

var nodes = []node{
	{"n1", addrs("172.30.0.11", "10.244.1.1", "fd00:30::11", "fd00:244:1::1")},
	{"n2", addrs("172.30.0.12", "10.244.2.1", "fd00:30::12", "fd00:244:2::1")},
}

// outside are addresses of no pod: the world, and a pod CIDR's unused one.
// (10.244.2.50 is the finished pod's.)
var outside = addrs("192.168.100.5", "192.168.100.6", "10.244.9.9", "10.244.2.50", "2001:db8::5", "2001:db8::6", "fd00:244:9::9")

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func namespaces() []*corev1.Namespace {
	extra := map[string]map[string]string{"x": {"team": "red"}, "y": {"team": "blue"}, "z": {}}
	var out []*corev1.Namespace
	for _, n := range []string{"x", "y", "z"} {
		l := map[string]string{corev1.LabelMetadataName: n, "ns": n}
		for k, v := range extra[n] {
			l[k] = v
		}
		out = append(out, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: l}})
	}
	return out
}

func pods() []*corev1.Pod {
	var out []*corev1.Pod
	k := 0
	for _, ns := range []string{"x", "y", "z"} {
		for _, name := range []string{"a", "b", "c"} {
			n := 1 + k%2
			p := pod(ns, name, fmt.Sprintf("n%d", n), fmt.Sprintf("10.244.%d.%d", n, 10+k), fmt.Sprintf("fd00:244:%d::%x", n, 10+k))
			k++
			out = append(out, p)
		}
	}
	host := pod("x", "host", "n1", "172.30.0.11", "fd00:30::11")
	host.Labels["pod"], host.Spec.HostNetwork = "a", true
	done := pod("y", "done", "n2", "10.244.2.50", "fd00:244:2::50")
	done.Labels["pod"], done.Status.Phase = "a", corev1.PodSucceeded
	return append(out, host, done)
}

func pod(ns, name, nodeName, ip4, ip6 string) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		for _, n := range []int32{80, 81} {
			ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", n, strings.ToLower(string(proto))), ContainerPort: n, Protocol: proto})
		}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "main", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip4, PodIPs: []corev1.PodIP{{IP: ip4}, {IP: ip6}}},
	}
	switch name {
	case "a":
		p.Labels["app"] = "web"
		p.Spec.Containers[0].Ports = append(ports, corev1.ContainerPort{Name: "http", ContainerPort: 80}) // protocol unset: TCP
	case "b":
		p.Labels["app"] = "api"
		p.Spec.Containers[0].Ports = append(ports, corev1.ContainerPort{Name: "http", ContainerPort: 81, Protocol: corev1.ProtocolTCP})
	case "c":
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = []corev1.Container{
			{Name: "setup", Ports: []corev1.ContainerPort{{Name: "early", ContainerPort: 79}}},
			{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 8080}}},
		}
	}
	return p
}

type staticSource struct{ c *policy.Cluster }

func (s staticSource) Cluster() (*policy.Cluster, error) { return s.c, nil }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// world is the fixture under some policies: each node's table, written
// by an engine into a Fake, and the evaluator.
type world struct {
	eval   *evaluator
	tables map[string]*nft.Fake // per node and family: "n1/IPv4"
}

func newWorld(t *testing.T, policies []*networkingv1.NetworkPolicy) *world {
	t.Helper()
	c := &policy.Cluster{Policies: policies, Pods: pods(), Namespaces: namespaces()}
	w := &world{eval: &evaluator{pods: c.Pods, namespaces: c.Namespaces, policies: policies, nodeAddrs: map[string][]netip.Addr{}},
		tables: map[string]*nft.Fake{}}
	for _, n := range nodes {
		w.eval.nodeAddrs[n.name] = n.addrs
		for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
			fake := nft.NewFake(fam, policy.Table)
			if err := policy.NewEngine(fam, n.name, fake, staticSource{c}, quiet).Sync(context.Background()); err != nil {
				t.Fatalf("sync %s %s: %v", n.name, fam, err)
			}
			w.tables[n.name+"/"+fam.String()] = fake
		}
	}
	return w
}

// location is where an address lives: the node of a running pod (not on
// the host network), or of a node address; "" for elsewhere.
func location(a netip.Addr) (nodeName string, isPod bool) {
	if l, ok := locations[a]; ok {
		return l.node, l.pod
	}
	nodeName, isPod = locate(a)
	locations[a] = struct {
		node string
		pod  bool
	}{nodeName, isPod}
	return nodeName, isPod
}

var locations = map[netip.Addr]struct {
	node string
	pod  bool
}{}

func locate(a netip.Addr) (nodeName string, isPod bool) {
	for _, p := range pods() {
		if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if netip.MustParseAddr(ip.IP) == a {
				return p.Spec.NodeName, true
			}
		}
	}
	for _, n := range nodes {
		if slices.Contains(n.addrs, a) {
			return n.name, false
		}
	}
	return "", false
}

// judges are the nodes whose forward hook a packet meets: the node of a
// pod that sends it, and the node of a pod that receives it, but not a
// node it starts or ends at (output and input are not forward).
func judges(src, dst netip.Addr) []string {
	var out []string
	srcNode, srcPod := location(src)
	dstNode, dstPod := location(dst)
	if srcPod && !(dstNode == srcNode && !dstPod) {
		out = append(out, srcNode)
	}
	if dstPod && !(srcNode == dstNode && !srcPod) && !slices.Contains(out, dstNode) {
		out = append(out, dstNode)
	}
	return out
}

// verdict is what the compiled tables do with p: every judging node must
// let it through.
func (w *world) verdict(t *testing.T, p tracePacket) bool {
	t.Helper()
	fam := nft.FamilyOf(p.src)
	for _, n := range judges(p.src, p.dst) {
		ok, err := trace(w.tables[n+"/"+fam.String()].Table, p)
		if err != nil {
			t.Fatalf("trace %+v on %s: %v", p, n, err)
		}
		if !ok {
			return false
		}
	}
	return true
}
