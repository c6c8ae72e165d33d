package agent

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/proxy"
)

func feedService(name, ip, version string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: version},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
}

func feedSlice(svc, ip, version string) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: svc + "-x", ResourceVersion: version,
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports:     []discoveryv1.EndpointPort{{Name: ptr.To(""), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}}}
}

// A feed hands on what an informer's handlers would get: new and changed
// objects (not one a relist repeats with the same resourceVersion), and
// deletions, including those a relist finds.
func TestFeedHandsOnChanges(t *testing.T) {
	var got []string
	f := &feed{
		update: func(o any) { got = append(got, "update "+objectKey(o).Name+" "+objectVersion(o)) },
		remove: func(o any) { got = append(got, "remove "+objectKey(o).Name) },
		entry: func(o any) (k types.NamespacedName, e feedEntry) {
			return objectKey(o), feedEntry{version: objectVersion(o)}
		},
		tombstone: func(k types.NamespacedName, _ feedEntry) any { return feedService(k.Name, "", "") },
		entries:   map[types.NamespacedName]feedEntry{},
	}
	if f.HasSynced() {
		t.Fatal("synced before the first list")
	}
	_ = f.Replace([]any{feedService("a", "", "1"), feedService("b", "", "1")}, "1")
	_ = f.Update(feedService("a", "", "1")) // nothing changed
	_ = f.Update(feedService("a", "", "2"))
	_ = f.Add(feedService("c", "", "3"))
	_ = f.Delete(feedService("c", "", "4"))
	_ = f.Replace([]any{feedService("a", "", "2"), feedService("d", "", "5")}, "5") // b was deleted meanwhile
	want := []string{"update a 1", "update b 1", "update a 2", "update c 3", "remove c", "update d 5", "remove b"}
	if !slices.Equal(got, want) || !f.HasSynced() || len(f.entries) != 2 {
		t.Fatalf("handed on %q (%d entries), want %q", got, len(f.entries), want)
	}
}

// Through the agent's feeds, the proxiers program what the API server
// has, and a relist that no longer has a Service and its EndpointSlice
// deletes them from the table.
func TestFeedsProgramTheProxiers(t *testing.T) {
	fake := nft.NewFake(nft.IPv4, proxy.Table)
	p := proxy.New(proxy.Config{NodeName: "node-1"}, fake, noConntrack{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer p.Close()
	a := &Agent{proxiers: []*proxy.Proxier{p}}
	svcs, eps := a.serviceFeed(), a.sliceFeed()
	_ = svcs.Replace([]any{feedService("web", "10.96.0.10", "1"), feedService("api", "10.96.0.11", "2")}, "2")
	_ = eps.Replace([]any{feedSlice("web", "10.244.1.2", "3"), feedSlice("api", "10.244.1.3", "4")}, "4")
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	for _, want := range []string{"10.96.0.10 . tcp . 80", "10.96.0.11 . tcp . 80", "10.244.1.2 . 8080", "10.244.1.3 . 8080"} {
		if !strings.Contains(dump, want) {
			t.Fatalf("missing %s:\n%s", want, dump)
		}
	}
	_ = svcs.Replace([]any{feedService("web", "10.96.0.10", "1")}, "5")
	_ = eps.Replace([]any{feedSlice("web", "10.244.1.2", "3")}, "5")
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	dump = fake.Dump()
	if !strings.Contains(dump, "10.96.0.10 . tcp . 80") || strings.Contains(dump, "10.96.0.11") || strings.Contains(dump, "10.244.1.3") {
		t.Fatalf("after a relist without api:\n%s", dump)
	}
}
