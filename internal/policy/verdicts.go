package policy

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/knftables"
)

// Verdicts is the metrics of what the tables decided, read from the
// kernel's named counters at each scrape (a prometheus.Collector):
//
//   - flatnet_policy_packets_total{namespace, policy, direction, verdict}:
//     first packets of connections of this node's pods that a policy
//     isolates, allowed or denied. The union of the policies decides, so
//     a packet of a pod that several policies isolate counts for each of
//     them. The kernel counts per pod and direction; each scrape adds the
//     counts since the last one to the policies isolating the pod then.
//   - flatnet_policy_spoofed_packets_total{protocol}: frames dropped by the
//     anti-spoofing table.
//   - flatnet_policy_revoked_flows_total: conntrack entries deleted
//     because a change denied their flow.
type Verdicts struct {
	engines []*Engine
	guard   *Guard

	mu     sync.Mutex
	last   map[podCounter]uint64 // kernel counts at the last scrape
	carry  map[podCounter]int64  // allowed counts owed (reads are not atomic)
	totals map[policyVerdict]float64
}

type podCounter struct {
	dir  string
	kind string
	ip   netip.Addr
}

type policyVerdict struct {
	policy, dir, verdict string
}

var (
	packetsDesc = prometheus.NewDesc("flatnet_policy_packets_total",
		"First packets of connections of this node's pods that the policy isolates, by verdict (of the union of policies).",
		[]string{"namespace", "policy", "direction", "verdict"}, nil)
	spoofedDesc = prometheus.NewDesc("flatnet_policy_spoofed_packets_total",
		"Frames from a pod with another's source address, dropped at the bridge.", []string{"protocol"}, nil)
	revokedDesc = prometheus.NewDesc("flatnet_policy_revoked_flows_total",
		"Conntrack entries deleted because a policy change denied their flow.", nil, nil)
)

// NewVerdicts reads the counters of engines and guard (nil for none).
func NewVerdicts(engines []*Engine, guard *Guard) *Verdicts {
	return &Verdicts{engines: engines, guard: guard, last: map[podCounter]uint64{}, carry: map[podCounter]int64{},
		totals: map[policyVerdict]float64{}}
}

var _ prometheus.Collector = &Verdicts{}

// Describe implements prometheus.Collector.
func (v *Verdicts) Describe(ch chan<- *prometheus.Desc) {
	ch <- packetsDesc
	ch <- spoofedDesc
	ch <- revokedDesc
}

// Collect implements prometheus.Collector.
func (v *Verdicts) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v.mu.Lock()
	defer v.mu.Unlock()
	revoked := 0.0
	seen := map[podCounter]bool{}
	for _, e := range v.engines {
		revoked += float64(e.revoked.Load())
		m := e.model.Load()
		counters, err := e.tables.ListCounters(ctx)
		if m == nil || err != nil {
			continue
		}
		v.add(m, packets(counters), seen)
	}
	for k := range v.last { // pods no longer isolated
		if !seen[k] {
			delete(v.last, k)
		}
	}
	for k := range v.carry {
		if !seen[k] {
			delete(v.carry, k)
		}
	}
	for k, n := range v.totals {
		ns, name, _ := strings.Cut(k.policy, "/")
		ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, n, ns, name, k.dir, k.verdict)
	}
	ch <- prometheus.MustNewConstMetric(revokedDesc, prometheus.CounterValue, revoked)
	if v.guard == nil {
		return
	}
	if counters, err := v.guard.tables.ListCounters(ctx); err == nil {
		byName := packets(counters)
		for _, p := range SpoofedProtocols {
			ch <- prometheus.MustNewConstMetric(spoofedDesc, prometheus.CounterValue, float64(byName["spoofed-"+p]), p)
		}
	}
}

func packets(cs []*knftables.Counter) map[string]uint64 {
	out := make(map[string]uint64, len(cs))
	for _, c := range cs {
		if c.Packets != nil {
			out[c.Name] = *c.Packets
		}
	}
	return out
}

// add adds the counts since the last scrape of m's isolated pods to the
// policies isolating them.
func (v *Verdicts) add(m *Model, counts map[string]uint64, seen map[podCounter]bool) {
	for _, d := range directions {
		dir := &m.Ingress
		if d.name == egressChain {
			dir = &m.Egress
		}
		for _, ip := range dir.Isolated {
			fresh := v.delta(podCounter{d.name, newCounts, ip}, counts[counterName(d, newCounts, ip)])
			denied := v.delta(podCounter{d.name, deniedCounts, ip}, counts[counterName(d, deniedCounts, ip)])
			owed := podCounter{d.name, "allowed", ip}
			seen[podCounter{d.name, newCounts, ip}], seen[podCounter{d.name, deniedCounts, ip}], seen[owed] = true, true, true
			allowed := int64(fresh) - int64(denied) + v.carry[owed]
			v.carry[owed] = min(allowed, 0)
			for _, p := range dir.Policies[ip] {
				v.totals[policyVerdict{p, d.name, "allowed"}] += float64(max(allowed, 0))
				v.totals[policyVerdict{p, d.name, "denied"}] += float64(denied)
			}
		}
	}
}

// delta is how much a kernel counter grew since the last scrape (all of
// it when it is new, or was made anew).
func (v *Verdicts) delta(k podCounter, now uint64) uint64 {
	last, ok := v.last[k]
	v.last[k] = now
	if !ok || now < last {
		return now
	}
	return now - last
}
