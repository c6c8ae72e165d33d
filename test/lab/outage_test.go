package lab_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// The API server gone for a minute: Services and pods keep working from
// what the nodes have programmed, every flatnetd stays live (/healthz 200:
// no change waits for a sync it cannot do), and once the API server is back
// flatnetd catches up within seconds (a Service created after the outage is
// served).
func TestAPIServerOutage(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	steady := deploy(t, ns, netexecDeployment("steady", 2))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	from := podNS(&clients[0])
	vip := net.JoinHostPort(service(t, ns, "steady", nil).Spec.ClusterIP, "80")
	hostname(t, from, vip)

	pid, err := readPid("kube-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted { // leave a working lab to the tests after this one
			_ = flatnet("lab", "up", "--nodes", fmt.Sprint(nodes)).Run()
		}
	})
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(5 * time.Second) {
		if got, err := probe.HTTPGet(from, vip, "/hostname"); err != nil || !strings.HasPrefix(got, "steady-") {
			t.Fatalf("through %s with the API server down: %q, %v", vip, got, err)
		}
		for i := 1; i <= nodes; i++ {
			node := netns.Path(layout.NS(layout.NodeName(i)))
			if body, err := probe.HTTPGet(node, "127.0.0.1:9465", "/healthz"); err != nil {
				t.Fatalf("flatnetd on %s with the API server down: %v %s", layout.NodeName(i), err, body)
			}
		}
	}

	if out, err := flatnet("lab", "up", "--nodes", fmt.Sprint(nodes)).CombinedOutput(); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	restarted = true
	back := time.Now()
	// A Service without a selector and its EndpointSlice, written here:
	// what is measured is flatnetd catching up, not the controller
	// manager's informers (which back off after an outage as client-go's
	// do).
	fresh := service(t, ns, "fresh", func(s *corev1.Service) { s.Spec.Selector = nil })
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "fresh-1", Labels: map[string]string{discoveryv1.LabelServiceName: "fresh"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, p := range steady {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.Status.PodIP}, NodeName: ptr.To(p.Spec.NodeName),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(fresh.Spec.ClusterIP, "80")
	var got string
	deadline := time.Now().Add(10 * time.Second)
	for got, err = probe.HTTPGet(from, addr, "/hostname"); err != nil; got, err = probe.HTTPGet(from, addr, "/hostname") {
		if time.Now().After(deadline) {
			t.Fatalf("a Service created after the API server came back is not served %s later: %v", time.Since(back).Round(time.Second), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.HasPrefix(got, "steady-") {
		t.Fatalf("the Service created after the outage answered %q", got)
	}
	t.Logf("a Service created after the API server came back was served %s later", time.Since(back).Round(time.Millisecond))
}
