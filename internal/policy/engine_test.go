package policy_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

var denyAll = []*networkingv1.NetworkPolicy{
	np("x", "deny", spec{PolicyTypes: bothTypes}), np("y", "deny", spec{PolicyTypes: bothTypes}), np("z", "deny", spec{PolicyTypes: bothTypes})}

// Replies of allowed connections (and errors about them) pass even where
// everything is denied; new connections do not.
func TestRepliesPass(t *testing.T) {
	w := newWorld(t, denyAll)
	for _, p := range probes() {
		if len(judges(p.src, p.dst)) == 0 {
			continue // node <-> its own pods: never judged
		}
		for state, want := range map[string]bool{"established": true, "related": true, "new": false, "invalid": false} {
			p.ctState = state
			if got := w.verdict(t, p); got != want {
				t.Fatalf("%s %s -> %s %s/%d: %v, want %v", state, p.src, p.dst, p.proto, p.port, got, want)
			}
		}
	}
}

// Over IPv6, pods on one bridge find each other with neighbour discovery,
// which conntrack leaves untracked: it passes between isolated pods.
func TestNeighbourDiscoveryPasses(t *testing.T) {
	w := newWorld(t, denyAll)
	a, c := netip.MustParseAddr("fd00:244:1::a"), netip.MustParseAddr("fd00:244:1::c") // x/a, x/c on n1
	for _, typ := range []string{"nd-neighbor-solicit", "nd-neighbor-advert"} {
		p := tracePacket{packet: packet{src: a, dst: c, proto: "ICMPv6"}, ctState: "untracked", icmpType: typ}
		if !w.verdict(t, p) {
			t.Errorf("%s between isolated pods dropped", typ)
		}
	}
	p := tracePacket{packet: packet{src: a, dst: c, proto: "ICMPv6"}, ctState: "new", icmpType: "echo-request"}
	if w.verdict(t, p) {
		t.Error("an echo request between isolated pods passed")
	}
}

// The table hooks forward only: traffic a node sends or receives itself
// (kubelet probes, a pod reaching its node) is never judged.
func TestOnlyForwardIsHooked(t *testing.T) {
	w := newWorld(t, denyAll)
	for name, f := range w.tables {
		for _, c := range f.Table.Chains {
			if c.Hook != nil && (*c.Hook != knftables.ForwardHook || *c.Priority != knftables.FilterPriority) {
				t.Errorf("%s: chain %s hooks %s at %s", name, c.Name, *c.Hook, *c.Priority)
			}
		}
	}
}

// recorder keeps the last transaction an engine ran.
type recorder struct {
	*nft.Fake
	last *nft.Tx
	runs int
}

func (r *recorder) Run(ctx context.Context, tx *nft.Tx) error {
	r.last, r.runs = tx, r.runs+1
	return r.Fake.Run(ctx, tx)
}

type mutableSource struct{ c *policy.Cluster }

func (s *mutableSource) Cluster() (*policy.Cluster, error) { return s.c, nil }

// A sync after a change writes only elements, and leaves the table as a
// fresh engine's full sync writes it: policies added and deleted, pod and
// namespace labels changed, a pod gone, a pod moved to another address.
func TestPartialSyncsEqualAFullSync(t *testing.T) {
	ctx := context.Background()
	src := &mutableSource{&policy.Cluster{Pods: pods(), Namespaces: namespaces()}}
	for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
		rec := &recorder{Fake: nft.NewFake(fam, policy.Table)}
		e := policy.NewEngine(fam, "n1", rec, src, quiet)
		steps := []struct {
			name   string
			change func(c *policy.Cluster)
		}{
			{"start", func(c *policy.Cluster) {}},
			{"policies", func(c *policy.Cluster) {
				for _, pc := range cases {
					c.Policies = append(c.Policies, pc.policies...)
				}
			}},
			{"pod label", func(c *policy.Cluster) { c.Pods[3].Labels["pod"] = "b" }},
			{"namespace label", func(c *policy.Cluster) { c.Namespaces[1].Labels["ns"] = "w" }},
			{"policy deleted", func(c *policy.Cluster) { c.Policies = c.Policies[3:] }},
			{"pod deleted", func(c *policy.Cluster) { c.Pods = c.Pods[1:] }},
			{"pod moved", func(c *policy.Cluster) {
				c.Pods[1].Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.99"}, {IP: "fd00:244:1::99"}}
			}},
			{"unchanged", func(c *policy.Cluster) {}},
		}
		for i, s := range steps {
			s.change(src.c)
			runs := rec.runs
			if err := e.Sync(ctx); err != nil {
				t.Fatalf("%s %s: %v", fam, s.name, err)
			}
			if i > 0 && rec.runs > runs && !elementsAndCounters(rec.last) {
				t.Errorf("%s %s: the sync wrote more than elements and counters", fam, s.name)
			}
			if s.name == "unchanged" && rec.runs != runs {
				t.Errorf("%s: a sync without a change wrote a transaction", fam)
			}
			fresh := nft.NewFake(fam, policy.Table)
			if err := policy.NewEngine(fam, "n1", fresh, src, quiet).Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if got, want := rec.Dump(), fresh.Dump(); got != want {
				t.Errorf("%s after %s: the table differs from a full sync's:\n%s\nwant\n%s", fam, s.name, got, want)
			}
		}
	}
}

type unsynced struct{}

func (unsynced) Cluster() (*policy.Cluster, error) { return nil, policy.ErrNotSynced }

// Until its caches have synced an engine writes nothing: a restarted
// agent keeps the table its predecessor wrote.
func TestNothingWrittenUntilSynced(t *testing.T) {
	rec := &recorder{Fake: nft.NewFake(nft.IPv4, policy.Table)}
	if err := policy.NewEngine(nft.IPv4, "n1", rec, unsynced{}, quiet).Sync(context.Background()); err != nil || rec.runs != 0 {
		t.Errorf("sync before the caches: %v, %d transactions", err, rec.runs)
	}
}

// A table deleted behind the engine's back is written again by the next
// sync, though nothing changed.
func TestMissingTableRewritten(t *testing.T) {
	ctx := context.Background()
	fake := nft.NewFake(nft.IPv4, policy.Table)
	e := policy.NewEngine(nft.IPv4, "n1", fake, staticSource{&policy.Cluster{Policies: denyAll, Pods: pods(), Namespaces: namespaces()}}, quiet)
	if err := e.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	want := fake.Dump()
	tx := fake.NewTx()
	tx.Delete(&knftables.Table{})
	if err := fake.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := e.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fake.Dump(); got != want {
		t.Errorf("after the table was deleted and a sync:\n%s\nwant\n%s", got, want)
	}
}

// The engine on its runner: a poke leads to a sync, and Run returns when
// its context ends (run with -race).
func TestEngineRuns(t *testing.T) {
	fake := nft.NewFake(nft.IPv4, policy.Table)
	e := policy.NewEngine(nft.IPv4, "n1", fake, staticSource{&policy.Cluster{Policies: denyAll, Pods: pods(), Namespaces: namespaces()}}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	e.Poke()
	deadline := time.Now().Add(5 * time.Second)
	for e.Status().LastSuccess.IsZero() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if e.Status().LastSuccess.IsZero() {
		t.Fatalf("no successful sync: %+v", e.Status())
	}
	if s := fake.Table.Sets["ingress-isolated"]; s == nil || len(s.Elements) == 0 {
		t.Error("the runner's sync wrote no isolated pods")
	}
}

// elementsAndCounters reports whether tx only adds and deletes elements
// and named counters.
func elementsAndCounters(tx *nft.Tx) bool {
	for _, op := range tx.Ops() {
		switch op.Obj.(type) {
		case *knftables.Element, *knftables.Counter:
			if op.Verb == nft.Flush {
				return false
			}
		default:
			return false
		}
	}
	return true
}
