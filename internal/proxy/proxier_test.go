package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// recordingConntrack remembers which flows the proxy asked to delete.
type recordingConntrack struct{ cleared []string }

func (c *recordingConntrack) Delete(flows []Flow) error {
	for _, f := range flows {
		c.cleared = append(c.cleared, f.String())
	}
	return nil
}

func service(name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Type: corev1.ServiceTypeClusterIP, Ports: ports}}
}

func slice(svc string, port int32, proto corev1.Protocol, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svc + "-abc", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Port: ptr.To(port), Protocol: ptr.To(proto)}},
		Endpoints:   eps,
	}
}

func ready(ip, node string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}
}

func newFakeProxier(t *testing.T) (*Proxier, *nft.Fake, *recordingConntrack) {
	fake := nft.NewFake(nft.IPv4, Table)
	ct := &recordingConntrack{}
	p := New(Config{NodeName: "node-1", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}, fake, ct, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(p.Close)
	return p, fake, ct
}

func TestDumpExample(t *testing.T) {
	p, fake, _ := newFakeProxier(t)
	p.UpdateService(service("web", "10.96.0.10", corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}))
	p.UpdateSlice(slice("web", 8080, corev1.ProtocolTCP, ready("10.244.1.2", "node-1"), ready("10.244.2.2", "node-2")))
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	if !strings.Contains(dump, "numgen random mod 2") {
		t.Fatalf("no load balancing:\n%s", dump)
	}
	t.Log(dump)
}
