package lab_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// ipv6Of is the IPv6 address among a pod's IPs ("" if it has none).
func ipv6Of(p *corev1.Pod) string {
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is6() {
			return ip.IP
		}
	}
	return ""
}

// The lab is dual-stack: every node has an InternalIP and a pod CIDR of each
// family, every pod an IP of each (IPv4 first), and pods reach each other
// across nodes over IPv6 without NAT; a node reaches a remote pod with its
// own IPv6 address, and a pod reaches the outside host masqueraded to its
// node's IPv6 address.
func TestDualStackPodNetwork(t *testing.T) {
	requireLab(t)
	ctx := context.Background()
	for i := 1; i <= nodes; i++ {
		n, err := client.CoreV1().Nodes().Get(ctx, layout.NodeName(i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(n.Spec.PodCIDRs) != 2 || !lab.ClusterCIDR6.Contains(netip.MustParsePrefix(n.Spec.PodCIDRs[1]).Addr()) {
			t.Fatalf("%s pod CIDRs %v, want an IPv4 and an IPv6 one (in %s)", n.Name, n.Spec.PodCIDRs, lab.ClusterCIDR6)
		}
		var internal []string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = append(internal, a.Address)
			}
		}
		if want := []string{lab.NodeIP(i).String(), lab.NodeIP6(i).String()}; fmt.Sprint(internal) != fmt.Sprint(want) {
			t.Fatalf("%s InternalIPs %v, want %v", n.Name, internal, want)
		}
	}
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("ds", 3))
	for _, p := range pods {
		if len(p.Status.PodIPs) != 2 || p.Status.PodIPs[0].IP != p.Status.PodIP || ipv6Of(&p) == "" {
			t.Fatalf("pod %s IPs %v (podIP %s): want IPv4 first, then IPv6", p.Name, p.Status.PodIPs, p.Status.PodIP)
		}
	}
	for _, from := range pods {
		for _, to := range pods {
			if from.Spec.NodeName == to.Spec.NodeName {
				continue
			}
			src, dst := ipv6Of(&from), ipv6Of(&to)
			var got string
			eventually(t, 10*time.Second, "IPv6 "+src+" -> "+dst, func() (err error) {
				got, err = probe.HTTPGet(podNS(&from), net.JoinHostPort(dst, "8080"), "/clientip")
				return err
			})
			if host(got) != src {
				t.Errorf("HTTP over IPv6 %s -> %s: server saw %s, want the client pod's own %s", from.Name, to.Name, got, src)
			}
			got, err := probe.UDPRequest(podNS(&from), net.JoinHostPort(dst, "8081"), "clientip")
			if err != nil || host(got) != src {
				t.Errorf("UDP over IPv6 %s -> %s: saw %q, %v; want %s", from.Name, to.Name, got, err, src)
			}
		}
	}
	// Node -> remote pod over IPv6: the pod sees the node's own address.
	for i := 1; i <= nodes; i++ {
		for _, to := range pods {
			if to.Spec.NodeName == layout.NodeName(i) {
				continue
			}
			got, err := probe.HTTPGet(netns.Path(layout.NS(layout.NodeName(i))), net.JoinHostPort(ipv6Of(&to), "8080"), "/clientip")
			if err != nil || host(got) != lab.NodeIP6(i).String() {
				t.Errorf("node-%d -> pod %s over IPv6: saw %q, %v; want %s", i, to.Name, got, err, lab.NodeIP6(i))
			}
		}
	}
	// Pod -> outside over IPv6: masqueraded to the node's IPv6 address.
	outsideTellsClient(t, "tcp6", "[::]:9006")
	for _, p := range pods {
		c, err := probe.Dial(podNS(&p), "tcp", net.JoinHostPort(lab.OutsideIP6.String(), "9006"), 3*time.Second)
		if err != nil {
			t.Fatalf("pod %s -> outside over IPv6: %v", p.Name, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if want := lab.NodeIP6(nodeIndex(p.Spec.NodeName)).String(); host(string(b)) != want {
			t.Errorf("outside saw %s from pod %s, want its node's IPv6 address %s", b, p.Name, want)
		}
	}
}

// A RequireDualStack Service has a ClusterIP of each family; over IPv6 it
// balances across all backends without masquerading pod clients, carries UDP
// too, and its NodePort answers on every node's IPv6 address from outside.
// An IPv6-only Service without endpoints, and an unknown port of an IPv6
// ClusterIP, are rejected at once.
func TestDualStackService(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("dsvc", 3))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	from, clientIP6 := podNS(&clients[0]), ipv6Of(&clients[0])
	svc := service(t, ns, "dsvc", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	})
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("ClusterIPs %v, want one per family", svc.Spec.ClusterIPs)
	}
	vip4, vip6 := svc.Spec.ClusterIPs[0], svc.Spec.ClusterIPs[1]
	if !lab.ServiceCIDR6.Contains(netip.MustParseAddr(vip6)) {
		t.Fatalf("second ClusterIP %s is not in %s", vip6, lab.ServiceCIDR6)
	}
	seen := map[string]int{}
	for range 60 {
		seen[hostname(t, from, net.JoinHostPort(vip6, "80"))]++
	}
	if len(seen) != 3 {
		t.Fatalf("60 connections to [%s]:80 reached %v, want all 3 backends", vip6, seen)
	}
	if got := hostname(t, from, net.JoinHostPort(vip4, "80")); !strings.HasPrefix(got, "dsvc-") {
		t.Fatalf("IPv4 ClusterIP %s answered %q", vip4, got)
	}
	got, err := probe.HTTPGet(from, net.JoinHostPort(vip6, "80"), "/clientip")
	if err != nil || host(got) != clientIP6 {
		t.Fatalf("through [%s]:80 the backend saw %q (%v), want the client pod's own %s", vip6, got, err, clientIP6)
	}
	if got, err := probe.UDPRequest(from, net.JoinHostPort(vip6, "81"), "hostname"); err != nil || !strings.HasPrefix(got, "dsvc-") {
		t.Fatalf("UDP via [%s]:81: %q, %v", vip6, got, err)
	}
	for i := 1; i <= nodes; i++ {
		addr := net.JoinHostPort(lab.NodeIP6(i).String(), fmt.Sprint(svc.Spec.Ports[0].NodePort))
		if got := hostname(t, outsideNS(), addr); !strings.HasPrefix(got, "dsvc-") {
			t.Fatalf("NodePort %s answered %q", addr, got)
		}
	}
	refusedNow(t, from, net.JoinHostPort(vip6, "9999"))
	empty := service(t, ns, "nobody", func(s *corev1.Service) {
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	})
	if a := netip.MustParseAddr(empty.Spec.ClusterIP); !a.Is6() {
		t.Fatalf("IPv6-only Service got ClusterIP %s", a)
	}
	refusedNow(t, from, net.JoinHostPort(empty.Spec.ClusterIP, "80"))
}
