package policy_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flatnet-io/flatnet/internal/admit"
	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/policy"
)

// lockedFake is a Fake a test reads while an engine's runner writes it.
type lockedFake struct {
	mu sync.Mutex
	*nft.Fake
	runs int
}

func (f *lockedFake) Run(ctx context.Context, tx *nft.Tx) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs++
	return f.Fake.Run(ctx, tx)
}

// elements lists a set's keys (with their comments).
func (f *lockedFake) elements(set string) []string { return f.Keys(set, true) }

// newcomer is pod x/n of node n1, just created: the API server has it,
// with no address yet.
func newcomer() *corev1.Pod {
	p := pod("x", "n", "n1", "", "")
	p.UID, p.Status.PodIP, p.Status.PodIPs, p.Status.Phase = "uid-n", "", nil, corev1.PodPending
	return p
}

var newcomerIPs = []netip.Addr{netip.MustParseAddr("10.244.1.77"), netip.MustParseAddr("fd00:244:1::77")}

func addRequest() admit.Request {
	return admit.Request{Op: admit.Add, Namespace: "x", Name: "n", UID: "uid-n", ContainerID: "c1", IfName: "eth0",
		HostVeth: "fnaaaa", IPs: newcomerIPs}
}

type admission struct {
	admitter *policy.Admitter
	tables   map[nft.Family]*lockedFake
	cancel   func()
	done     chan struct{}
}

// admitting runs an engine per family of node n1 on their runners over
// src, with an Admitter; tables are the families' tables (fresh when nil).
func admitting(t *testing.T, src policy.Source, tables map[nft.Family]*lockedFake, pods ...*corev1.Pod) *admission {
	t.Helper()
	if tables == nil {
		tables = map[nft.Family]*lockedFake{}
		for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
			tables[fam] = &lockedFake{Fake: nft.NewFake(fam, policy.Table)}
		}
	}
	att := policy.NewAttachments()
	a := &admission{tables: tables, done: make(chan struct{}), admitter: &policy.Admitter{Node: "n1", Attachments: att,
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")},
		Pod: func(_ context.Context, ns, name string, _ types.UID) (*corev1.Pod, error) {
			for _, p := range pods {
				if p.Namespace == ns && p.Name == name {
					return p, nil
				}
			}
			return nil, errors.New("not found")
		}}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
		e := policy.NewEngine(fam, "n1", tables[fam], src, quiet)
		e.UseAttachments(att)
		a.admitter.Engines = append(a.admitter.Engines, e)
		wg.Add(1)
		go func() { defer wg.Done(); e.Run(ctx) }()
	}
	go func() { wg.Wait(); close(a.done) }()
	a.cancel = func() { cancel(); <-a.done }
	t.Cleanup(a.cancel)
	return a
}

// A pod that a policy selects is isolated in both families when the
// plugin's request is answered, though the cluster has no address of it;
// its attachment is recorded with its UID.
func TestAdmittedBeforeItsStatus(t *testing.T) {
	c := &policy.Cluster{Policies: denyAll, Pods: append(pods(), newcomer()), Namespaces: namespaces()}
	a := admitting(t, staticSource{c}, nil, newcomer())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.admitter.Handle(ctx, addRequest()); err != nil {
		t.Fatal(err)
	}
	for fam, want := range map[nft.Family]string{nft.IPv4: "10.244.1.77", nft.IPv6: "fd00:244:1::77"} {
		if got := a.tables[fam].elements("ingress-isolated"); !slices.Contains(got, want) {
			t.Errorf("%s: ingress-isolated %v lacks the admitted pod's %s", fam, got, want)
		}
		if got := a.tables[fam].elements("attachments"); !slices.Equal(got, []string{"fnaaaa . " + want + " # uid-n"}) {
			t.Errorf("%s: attachments %v", fam, got)
		}
	}
	if err := a.admitter.Handle(ctx, admit.Request{Op: admit.Del, HostVeth: "fnaaaa"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.tables[nft.IPv4].elements("attachments")) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the attachment is still recorded after DEL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := a.tables[nft.IPv4].elements("ingress-isolated"); slices.Contains(got, "10.244.1.77") {
		t.Errorf("after DEL the address is still isolated: %v", got)
	}
}

// What the agent refuses: a pod of another node, another pod of the same
// name, an address outside the cluster, a request without a pod, a pod
// the API server does not know; and a pod it cannot admit in time (its
// caches not synced) is refused, leaving nothing recorded.
func TestAdmissionRefusals(t *testing.T) {
	elsewhere := newcomer()
	elsewhere.Name, elsewhere.Spec.NodeName = "far", "n2"
	c := &policy.Cluster{Policies: denyAll, Pods: pods(), Namespaces: namespaces()}
	a := admitting(t, staticSource{c}, nil, newcomer(), elsewhere)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name, mod := range map[string]func(*admit.Request){
		"scheduled to":  func(r *admit.Request) { r.Name, r.UID = "far", "" },
		"not uid-other": func(r *admit.Request) { r.UID = "uid-other" },
		"outside":       func(r *admit.Request) { r.IPs = []netip.Addr{netip.MustParseAddr("192.168.1.1")} },
		"are needed":    func(r *admit.Request) { r.Name = "" },
		"not found":     func(r *admit.Request) { r.Name = "ghost" },
		"unknown op \"": func(r *admit.Request) { r.Op = "gc" },
	} {
		req := addRequest()
		mod(&req)
		if err := a.admitter.Handle(ctx, req); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if l := a.admitter.Attachments.List(); len(l) > 0 {
		t.Errorf("refused requests left attachments: %+v", l)
	}

	b := admitting(t, unsynced{}, nil, newcomer())
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	err := b.admitter.Handle(short, addRequest())
	if err == nil || !strings.Contains(err.Error(), "not synced") {
		t.Errorf("with unsynced caches: %v, want a refusal naming them", err)
	}
	if l := b.admitter.Attachments.List(); len(l) > 0 {
		t.Errorf("a failed admission left its attachment: %+v", l)
	}
}

// A restarted agent (a fresh record, the table its predecessor left)
// reads the attachments back before its first commit, which is one
// transaction: the admitted pod, still without a status, stays isolated.
func TestRestartKeepsAdmittedPodsIsolated(t *testing.T) {
	c := &policy.Cluster{Policies: denyAll, Pods: append(pods(), newcomer()), Namespaces: namespaces()}
	first := admitting(t, staticSource{c}, nil, newcomer())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := first.admitter.Handle(ctx, addRequest()); err != nil {
		t.Fatal(err)
	}
	first.cancel()
	want := first.tables[nft.IPv4].Dump()
	for fam, tables := range first.tables {
		tables.runs = 0
		e := policy.NewEngine(fam, "n1", tables, staticSource{c}, quiet)
		e.UseAttachments(policy.NewAttachments())
		if err := e.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if tables.runs != 1 {
			t.Errorf("%s: the restarted engine's first sync ran %d transactions, want 1", fam, tables.runs)
		}
	}
	if got := first.tables[nft.IPv4].Dump(); got != want {
		t.Errorf("after a restart the table differs:\n%s\nwant\n%s", got, want)
	}
	if got := first.tables[nft.IPv6].elements("ingress-isolated"); !slices.Contains(got, "fd00:244:1::77") {
		t.Errorf("after a restart the admitted pod is not isolated: %v", got)
	}
}

// The record: an address given again leaves its old attachment; a pod's
// stale status naming an attached address does not count; records of
// veths gone are pruned after PruneAfter.
func TestAttachmentsOverlay(t *testing.T) {
	old := pod("x", "old", "n1", "10.244.1.77", "fd00:244:1::77") // status not yet updated: its address is the newcomer's now
	old.UID = "uid-old"
	onlyOld := np("x", "only-old", spec{PodSelector: labels("pod", "old")})
	c := &policy.Cluster{Policies: []*networkingv1.NetworkPolicy{onlyOld}, Pods: []*corev1.Pod{old, newcomer()}, Namespaces: namespaces()}
	att := policy.NewAttachments()
	att.Admit(policy.Attachment{HostVeth: "fnold", IPs: newcomerIPs[:1], UID: "uid-old"})
	att.Admit(policy.Attachment{HostVeth: "fnaaaa", IPs: newcomerIPs, UID: "uid-n"})
	if l := att.List(); len(l) != 1 || l[0].HostVeth != "fnaaaa" {
		t.Fatalf("after the address was given again: %+v", l)
	}
	fake := nft.NewFake(nft.IPv4, policy.Table)
	e := policy.NewEngine(nft.IPv4, "n1", fake, staticSource{c}, quiet)
	e.UseAttachments(att)
	if err := e.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := fake.Table.Sets["attachments"].Elements; len(got) != 1 || *got[0].Comment != "uid-n" {
		t.Errorf("attachments %+v", got)
	}
	if got := fake.Table.Sets["ingress-isolated"].Elements; len(got) != 0 {
		t.Errorf("a pod's stale status still counts: %v isolated", got[0].Key)
	}
	gone := false
	att.Links = func() (map[string]bool, error) { return map[string]bool{"fnaaaa": !gone}, nil }
	policy.SetClock(att, func() time.Time { return time.Now().Add(2 * policy.PruneAfter) })
	if err := e.Sync(context.Background()); err != nil || len(att.List()) != 1 {
		t.Fatalf("a live veth's record pruned: %v %+v", err, att.List())
	}
	gone = true
	policy.SetClock(att, func() time.Time { return time.Now().Add(3 * policy.PruneAfter) })
	if err := e.Sync(context.Background()); err != nil || len(att.List()) != 0 {
		t.Fatalf("the record of a veth gone for long is kept: %v %+v", err, att.List())
	}
}
