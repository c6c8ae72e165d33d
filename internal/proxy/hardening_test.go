package proxy

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// flakyNFT refuses transactions while fail is set, as the kernel refuses
// one it cannot apply (and then applies nothing of it).
type flakyNFT struct {
	nft.Tables
	mu   sync.Mutex
	fail bool
}

func (f *flakyNFT) Run(ctx context.Context, tx *nft.Tx) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("refused")
	}
	return f.Tables.Run(ctx, tx)
}

func (f *flakyNFT) setFail(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }

// A failed sync changes nothing in the kernel, so the proxier keeps its
// record of what is programmed: the retry (a full sync) clears conntrack
// only for what really changed. Before, a failure made the proxier forget
// and the retry cleared every UDP flow of every Service port.
func TestFailedSyncKeepsTheRecord(t *testing.T) {
	p, fake, ct := newFakeProxier(t)
	nft := &flakyNFT{Tables: fake}
	p.nft = nft
	ctx := context.Background()
	p.UpdateService(service("dns", "10.96.0.53", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}))
	p.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.3", "node-1")))
	p.UpdateService(service("web", "10.96.0.10", corev1.ServicePort{Port: 80}))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	nft.setFail(true)
	p.UpdateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1")))
	if err := p.Sync(ctx); err == nil {
		t.Fatal("the refused sync succeeded")
	}
	nft.setFail(false)
	ct.cleared = nil
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []string{"tcp 10.96.0.10:80 not NATed"}; !slices.Equal(ct.cleared, want) {
		t.Fatalf("the retry cleared %v, want %v (the DNS Service did not change)", ct.cleared, want)
	}
	if !strings.Contains(fake.Dump(), "10.244.1.2 . 8080") {
		t.Fatalf("the retry did not program the change that failed:\n%s", fake.Dump())
	}
}

// The first sync of a proxier (flatnetd restarted) clears only conntrack
// entries that no usable endpoint answers, not every UDP flow.
func TestFirstSyncReconcilesConntrack(t *testing.T) {
	p, _, ct := newFakeProxier(t)
	p.UpdateService(service("dns", "10.96.0.53", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}))
	p.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.4", "node-1"), ready("10.244.1.3", "node-1")))
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"udp 10.96.0.53:53 unless answered by [10.244.1.3 10.244.1.4]"}; !slices.Equal(ct.cleared, want) {
		t.Fatalf("first sync cleared %v, want %v", ct.cleared, want)
	}
	// The flow it names keeps what a usable endpoint answers and takes
	// the rest: an endpoint gone while no proxier ran, or no NAT at all.
	idx := newFlowIndex([]Flow{{Protocol: 17, Dst: netip.MustParseAddr("10.96.0.53"), Port: 53,
		Except: []netip.Addr{netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("10.244.1.4")}}})
	for reply, stale := range map[string]bool{"10.244.1.3": false, "10.244.1.4": false, "10.244.1.9": true, "10.96.0.53": true} {
		if got := idx.match(17, netip.MustParseAddr("10.96.0.53"), 53, netip.MustParseAddr(reply)); got != stale {
			t.Errorf("an entry answered by %s: deleted %v, want %v", reply, got, stale)
		}
	}
}

// SetZone (the agent's node sync) and Sync (the proxier's runner) run on
// different goroutines; run with -race.
func TestConcurrentZoneChanges(t *testing.T) {
	p, _, _ := newFakeProxier(t)
	p.UpdateService(service("web", "10.96.0.10", corev1.ServicePort{Port: 80}))
	p.UpdateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1")))
	var changes atomic.Int32
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				p.SetZone([]string{"zone-a", "zone-b"}[i%2])
				changes.Add(1)
				runtime.Gosched()
			}
		}
	}()
	for syncs := 0; syncs < 50 || changes.Load() < 100; syncs++ {
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	close(stop)
	<-done
}

// While syncs fail, EndpointSlice updates keep one trigger time per slice
// (the oldest not yet programmed), not one per update.
func TestTriggerTimesBoundedWhileSyncsFail(t *testing.T) {
	p, fake, _ := newFakeProxier(t)
	nft := &flakyNFT{Tables: fake, fail: true}
	p.nft = nft
	p.UpdateService(service("web", "10.96.0.10", corev1.ServicePort{Port: 80}))
	first := time.Now().Add(-time.Minute)
	for i := range 1000 {
		s := slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1"))
		s.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: first.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano)}
		p.UpdateSlice(s)
		if i%100 == 0 {
			_ = p.Sync(context.Background())
		}
	}
	p.mu.Lock()
	n, oldest := len(p.triggers), p.triggers[types.NamespacedName{Namespace: "ns", Name: "web-abc"}]
	p.mu.Unlock()
	if n != 1 || !oldest.Equal(first) {
		t.Fatalf("%d trigger times kept (oldest %v), want 1 (%v)", n, oldest, first)
	}
}

// eventLog records Events.
type eventLog struct{ events []string }

func (l *eventLog) Eventf(obj k8sruntime.Object, typ, reason, format string, args ...any) {
	s := obj.(*corev1.Service)
	l.events = append(l.events, s.Name+" "+reason)
}

// The ownership rule, as a user sees it: which Service serves an address,
// which gets an Event (once, not every sync), the metric, and the
// younger Service taking the address over when the owner leaves.
func TestAddressOwnership(t *testing.T) {
	p, fake, _ := newFakeProxier(t)
	events := &eventLog{}
	p.cfg.Events = events
	at := func(min int, s *corev1.Service) *corev1.Service {
		s.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC))
		return s
	}
	port := corev1.ServicePort{Port: 80}
	older := at(1, service("older", "10.96.0.1", port))
	older.Spec.ExternalIPs = []string{"203.0.113.1"}
	younger := at(2, service("younger", "10.96.0.2", port))
	younger.Spec.ExternalIPs = []string{"203.0.113.1", "203.0.113.2"}
	thief := at(0, service("thief", "10.96.0.3", port))
	thief.Spec.ExternalIPs = []string{"10.96.0.1", "10.96.0.99"} // another's ClusterIP on another port too
	thief.Spec.Ports = []corev1.ServicePort{{Port: 80}, {Name: "b", Port: 443}}
	tie := at(1, service("a-tie", "10.96.0.4", port)) // as old as "older", but first by name
	tie.Spec.ExternalIPs = []string{"203.0.113.2"}
	for _, s := range []*corev1.Service{older, younger, thief, tie} {
		p.UpdateService(s)
		p.UpdateSlice(slice(s.Name, 8080, corev1.ProtocolTCP, ready("10.244.1."+s.Spec.ClusterIP[len("10.96.0."):], "node-1")))
	}
	sync := func() string {
		t.Helper()
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		return fake.Dump()
	}
	dump := sync()
	for _, want := range []string{
		`203.0.113.1 . tcp . 80 comment "ns/older/tcp"`,
		`203.0.113.2 . tcp . 80 comment "ns/a-tie/tcp"`,
		`10.96.0.1 . tcp . 80 comment "ns/older/tcp"`,
		`10.96.0.99 . tcp . 80 comment "ns/thief/tcp"`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("missing %s", want)
		}
	}
	for _, bad := range []string{`203.0.113.1 . tcp . 80 comment "ns/younger`, `10.96.0.1 . tcp . 443`, `10.96.0.1 . tcp . 80 comment "ns/thief`} {
		if strings.Contains(dump, bad) {
			t.Errorf("programmed %s", bad)
		}
	}
	if got := testutil.ToFloat64(p.metrics.conflicts); got != 4 {
		t.Errorf("conflicting frontends %v, want 4 (younger: 2, thief: 10.96.0.1 on 80 and 443)", got)
	}
	p.UpdateService(younger.DeepCopy()) // a resync of the same object
	sync()
	if !slices.Equal(events.events, []string{"thief AddressConflict", "younger AddressConflict"}) &&
		!slices.Equal(events.events, []string{"younger AddressConflict", "thief AddressConflict"}) {
		t.Errorf("events %v, want one each for thief and younger", events.events)
	}
	p.DeleteService(older)
	p.DeleteService(tie)
	dump = sync()
	for _, want := range []string{`203.0.113.1 . tcp . 80 comment "ns/younger/tcp"`, `203.0.113.2 . tcp . 80 comment "ns/younger/tcp"`,
		`10.96.0.1 . tcp . 80 comment "ns/thief/tcp"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("after the owners left: missing %s\n%s", want, dump)
		}
	}
	if got := testutil.ToFloat64(p.metrics.conflicts); got != 0 {
		t.Errorf("conflicting frontends %v after the owners left, want 0", got)
	}
}

// A restarted proxier reads back the UDP frontends the table held: flows
// to a Service deleted while no proxier ran are cleared, those of a
// Service that stays are not.
func TestRestartClearsFlowsOfServicesDeletedMeanwhile(t *testing.T) {
	before, fake, _ := newFakeProxier(t)
	dns := service("dns", "10.96.0.53", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP})
	before.UpdateService(dns)
	before.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.3", "node-1")))
	before.UpdateService(service("ntp", "10.96.0.123", corev1.ServicePort{Port: 123, Protocol: corev1.ProtocolUDP}))
	before.UpdateSlice(slice("ntp", 123, corev1.ProtocolUDP, ready("10.244.1.4", "node-1")))
	if err := before.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	ct := &recordingConntrack{}
	after := New(before.cfg, fake, ct, before.log)
	t.Cleanup(after.Close)
	after.UpdateService(dns)
	after.UpdateSlice(slice("dns", 53, corev1.ProtocolUDP, ready("10.244.1.3", "node-1")))
	if err := after.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ct.cleared)
	want := []string{"udp 10.96.0.123:123", "udp 10.96.0.53:53 unless answered by [10.244.1.3]"}
	if !slices.Equal(ct.cleared, want) {
		t.Fatalf("the restarted proxier cleared %v, want %v", ct.cleared, want)
	}
}
