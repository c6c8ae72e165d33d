package lab_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/probe"
)

// labelZones puts node i in zone-i and removes the labels when the test ends.
func labelZones(t *testing.T) {
	t.Helper()
	patch := func(node, zone string) {
		value := "null"
		if zone != "" {
			value = `"` + zone + `"`
		}
		body := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, corev1.LabelTopologyZone, value)
		if _, err := client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= nodes; i++ {
		patch(layout.NodeName(i), fmt.Sprintf("zone-%d", i))
	}
	t.Cleanup(func() {
		for i := 1; i <= nodes; i++ {
			patch(layout.NodeName(i), "")
		}
	})
}

// trafficDistribution PreferClose: the EndpointSlice controller hints each
// endpoint for its zone, and a client stays in its own zone.
func TestServiceTrafficDistributionStaysInZone(t *testing.T) {
	requireLab(t)
	labelZones(t)
	ns := namespace(t)
	backends := deploy(t, ns, netexecDeployment("zonal", 3))
	clients := deploy(t, ns, netexecDeployment("client", 3))
	svc := service(t, ns, "zonal", func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	})
	eventually(t, time.Minute, "zone hints in the EndpointSlice", func() error {
		slices, err := client.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=zonal"})
		if err != nil {
			return err
		}
		hinted := 0
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Hints != nil && len(e.Hints.ForZones) > 0 {
					hinted++
				}
			}
		}
		if hinted != 3 {
			return fmt.Errorf("%d of 3 endpoints hinted", hinted)
		}
		return nil
	})
	local := map[string]string{} // node -> backend pod there
	for _, b := range backends {
		local[b.Spec.NodeName] = b.Name
	}
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	for _, c := range clients {
		want := local[c.Spec.NodeName]
		eventually(t, 30*time.Second, "client on "+c.Spec.NodeName+" stays in its zone", func() error {
			for range 15 {
				got, err := probe.HTTPGet(podNS(&c), vip, "/hostname")
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("reached %s, want %s in the same zone", got, want)
				}
			}
			return nil
		})
	}
}

// A UDP socket that was rejected while a Service had no endpoints works as
// soon as it gets one (the conntrack entry of the rejected flow is cleared).
func TestServiceUDPZeroToN(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("late", 1))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	scale(t, ns, "late", 0)
	svc := service(t, ns, "late", nil)
	conn, err := probe.Dial(podNS(&clients[0]), "udp", net.JoinHostPort(svc.Spec.ClusterIP, "81"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() (string, error) {
		_ = conn.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := conn.Write([]byte("hostname")); err != nil {
			return "", err
		}
		b := make([]byte, 256)
		n, err := conn.Read(b)
		return string(b[:n]), err
	}
	for range 5 { // no endpoints: rejected, nothing answers
		if got, err := ask(); err == nil {
			t.Fatalf("answered %q without endpoints", got)
		}
	}
	pods := scale(t, ns, "late", 1)
	eventually(t, 30*time.Second, "the same UDP socket answered by the new endpoint", func() error {
		got, err := ask()
		if err != nil {
			return err
		}
		if got != pods[0].Name {
			return fmt.Errorf("answered by %q", got)
		}
		return nil
	})
}

// A TCP segment conntrack finds INVALID (SYN+FIN) from a pod to a pod on
// another node is dropped by the sending node; a plain SYN gets through.
func TestInvalidPacketsDroppedBetweenNodes(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("inv", 2)) // spread: two nodes
	from, to := pods[0], pods[1]
	sniffer, err := probe.SniffTCP(podNS(&to))
	if err != nil {
		t.Fatal(err)
	}
	defer sniffer.Close()
	src, dst := netip.MustParseAddr(from.Status.PodIP), netip.MustParseAddr(to.Status.PodIP)
	if err := probe.SendTCPSegment(podNS(&from), src, dst, 41001, 8080, 0x02); err != nil {
		t.Fatal(err)
	}
	if !sniffer.Saw(41001, 2*time.Second) {
		t.Fatal("a plain SYN did not reach the pod on the other node (the probe does not work)")
	}
	if err := probe.SendTCPSegment(podNS(&from), src, dst, 41002, 8080, 0x03); err != nil {
		t.Fatal(err)
	}
	if sniffer.Saw(41002, 2*time.Second) {
		t.Fatalf("a SYN+FIN segment from %s (%s) reached %s (%s)", from.Name, from.Spec.NodeName, to.Name, to.Spec.NodeName)
	}
}

// Deleting a Service clears its UDP conntrack entries on the node: the
// client's next datagram is no longer carried to the old backend.
func TestServiceUDPDeletedServiceForgotten(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("bye", 1))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	svc := service(t, ns, "bye", nil)
	hostname(t, podNS(&clients[0]), net.JoinHostPort(svc.Spec.ClusterIP, "80"))
	conn, err := probe.Dial(podNS(&clients[0]), "udp", net.JoinHostPort(svc.Spec.ClusterIP, "81"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() error {
		_ = conn.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := conn.Write([]byte("hostname")); err != nil {
			return err
		}
		_, err := conn.Read(make([]byte, 256))
		return err
	}
	eventually(t, 30*time.Second, "UDP answer through the Service", ask)
	if err := client.CoreV1().Services(ns).Delete(context.Background(), "bye", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "no answer after the Service is gone", func() error {
		for range 3 {
			if ask() == nil {
				return fmt.Errorf("the deleted Service's backend still answers the old socket")
			}
		}
		return nil
	})
}
