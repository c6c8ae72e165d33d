package policy_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// countingTables is a Fake whose named counters read what the test says.
type countingTables struct {
	*nft.Fake
	packets map[string]uint64
}

func (c *countingTables) ListCounters(ctx context.Context) ([]*knftables.Counter, error) {
	cs, err := c.Fake.ListCounters(ctx)
	for _, k := range cs {
		k.Packets = knftables.PtrTo(c.packets[k.Name])
	}
	return cs, err
}

// gather is every sample of the collector: "name{labels}" → value.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	fams, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			out[f.GetName()+"{"+strings.Join(ls, ",")+"}"] = m.GetCounter().GetValue()
		}
	}
	return out
}

// The kernel's per-pod counts become per-policy counters: each policy
// isolating a pod gets the pod's verdicts since the last scrape (denied,
// and allowed: seen but not denied), monotonic across a counter made anew.
func TestVerdictsPerPolicy(t *testing.T) {
	deny := np("x", "deny", spec{PolicyTypes: ingressOnly})
	web := np("x", "web", spec{PodSelector: labels("pod", "a"), Ingress: []in{{From: []peer{nsPeer(labels("ns", "y"))}}}})
	c := &policy.Cluster{Policies: []*networkingv1.NetworkPolicy{deny, web}, Pods: pods(), Namespaces: namespaces()}
	tables := &countingTables{Fake: nft.NewFake(nft.IPv4, policy.Table), packets: map[string]uint64{}}
	e := policy.NewEngine(nft.IPv4, "n1", tables, staticSource{c}, quiet)
	if err := e.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	v := policy.NewVerdicts([]*policy.Engine{e}, nil)
	key := func(name, verdict string) string {
		return fmt.Sprintf("flatnet_policy_packets_total{direction=ingress,namespace=x,policy=%s,verdict=%s}", name, verdict)
	}
	for i, step := range []struct {
		a, aDenied, c, cDenied  uint64 // x/a (10.244.1.10), x/c (10.244.1.12): seen, denied
		denyAllowed, denyDenied float64
		webAllowed, webDenied   float64
	}{
		{10, 4, 3, 3, 6, 7, 6, 4},
		{15, 4, 3, 3, 11, 7, 11, 4},
		{2, 0, 3, 3, 13, 7, 13, 4}, // x/a's counters made anew
	} {
		tables.packets["ingress-new-10.244.1.10"], tables.packets["ingress-denied-10.244.1.10"] = step.a, step.aDenied
		tables.packets["ingress-new-10.244.1.12"], tables.packets["ingress-denied-10.244.1.12"] = step.c, step.cDenied
		got := gather(t, v)
		for k, want := range map[string]float64{key("deny", "allowed"): step.denyAllowed, key("deny", "denied"): step.denyDenied,
			key("web", "allowed"): step.webAllowed, key("web", "denied"): step.webDenied} {
			if got[k] != want {
				t.Errorf("scrape %d: %s = %v, want %v", i, k, got[k], want)
			}
		}
	}
}
