package policy_test

import (
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// samples collects the agent's verdict metrics in the node's namespace
// (on this goroutine: the counters are read over netlink there).
func (n *node) samples(t *testing.T) map[string]float64 {
	t.Helper()
	v := policy.NewVerdicts(n.agent.engines, n.agent.guard)
	ch := make(chan prometheus.Metric, 1000)
	if err := netns.Do(n.ns, func() error { v.Collect(ch); return nil }); err != nil {
		t.Fatal(err)
	}
	close(ch)
	out := map[string]float64{}
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		var ls []string
		for _, l := range d.Label {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(ls)
		name := m.Desc().String()
		name = name[strings.Index(name, `"`)+1:]
		name = name[:strings.Index(name, `"`)]
		out[name+"{"+strings.Join(ls, ",")+"}"] = d.GetCounter().GetValue()
	}
	return out
}

// Real packets are counted against the policy that isolates their pod:
// a connection to x/server's port 80 (allowed from y) and one to port 81
// (denied), each over IPv4 and IPv6.
func TestVerdictsCountedInTheKernel(t *testing.T) {
	n := newNode(t)
	port80 := intstr.FromInt32(80)
	web := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "web"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: &port80}}}}}}
	n.cluster.set(func(c *policyCluster) { c.Policies = []*networkingv1.NetworkPolicy{web} })
	n.startAgent()
	rt := n.runtime(n.admitting(""))
	client, server := n.newPod("y", "client"), n.newPod("x", "server")
	add(t, rt, client)
	ips := add(t, rt, server)
	echo(t, server)
	for _, ip := range ips {
		if !reaches(client, ip) {
			t.Errorf("y/client does not reach x/server:80 at %s", ip)
		}
		if reachesPort(client, ip, 81) {
			t.Errorf("y/client reaches x/server:81 at %s", ip)
		}
	}
	got := n.samples(t)
	allowed := got["flatnet_policy_packets_total{direction=ingress,namespace=x,policy=web,verdict=allowed}"]
	denied := got["flatnet_policy_packets_total{direction=ingress,namespace=x,policy=web,verdict=denied}"]
	if allowed != 2 || denied < 2 { // a denied SYN may be sent again
		t.Errorf("x/web: %v allowed, %v denied; want 2 (one connection per family) and at least 2:\n%v", allowed, denied, got)
	}
}

// reachesPort reports whether a TCP connect from pod src to dst:port
// succeeds.
func reachesPort(src cniPod, dst netip.Addr, port uint16) bool {
	return reachesAddr(src, netip.AddrPortFrom(dst, port))
}
