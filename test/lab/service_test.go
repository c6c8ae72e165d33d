package lab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

// service creates a Service for app with TCP 80 -> http and UDP 81 -> udp.
func service(t *testing.T, ns, app string, mod func(*corev1.Service)) *corev1.Service {
	t.Helper()
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: app}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": app},
		Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "udp", Port: 81, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(8081)},
		},
	}}
	if mod != nil {
		mod(s)
	}
	s, err := client.CoreV1().Services(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hostname asks addr for /hostname from nsPath, retrying while the rules
// converge.
func hostname(t *testing.T, nsPath, addr string) string {
	t.Helper()
	var got string
	eventually(t, 30*time.Second, "GET /hostname from "+addr, func() (err error) {
		got, err = probe.HTTPGet(nsPath, addr, "/hostname")
		return err
	})
	return got
}

// 300 connections through a ClusterIP spread over 3 backends on 3 nodes
// without starving any (chi-square, 2 degrees of freedom, p = 0.001).
func TestServiceClusterIPSpread(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	backends := deploy(t, ns, netexecDeployment("backend", 3))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	svc := service(t, ns, "backend", nil)
	from := podNS(&clients[0])
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	hostname(t, from, vip)
	counts := map[string]int{}
	for range 300 {
		name, err := probe.HTTPGet(from, vip, "/hostname")
		if err != nil {
			t.Fatalf("through %s: %v", vip, err)
		}
		counts[name]++
	}
	chi := 0.0
	for _, b := range backends {
		d := float64(counts[b.Name]) - 100
		chi += d * d / 100
	}
	if len(counts) != 3 || chi > 13.8 {
		t.Fatalf("300 connections spread as %v (chi-square %.1f > 13.8)", counts, chi)
	}
	t.Logf("spread %v, chi-square %.2f", counts, chi)
	// UDP through the same ClusterIP.
	if got, err := probe.UDPRequest(from, net.JoinHostPort(svc.Spec.ClusterIP, "81"), "hostname"); err != nil || !strings.HasPrefix(got, "backend-") {
		t.Fatalf("UDP via ClusterIP: %q, %v", got, err)
	}
}

// A NodePort answers on every node's address from the outside host.
func TestServiceNodePortFromOutside(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("np", 3))
	svc := service(t, ns, "np", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort })
	port := svc.Spec.Ports[0].NodePort
	outside := netns.Path(layout.NS("switch"))
	for i := 1; i <= nodes; i++ {
		addr := net.JoinHostPort(lab.NodeIP(i).String(), fmt.Sprint(port))
		if got := hostname(t, outside, addr); !strings.HasPrefix(got, "np-") {
			t.Fatalf("NodePort on %s answered %q", layout.NodeName(i), got)
		}
	}
}

// A Service without endpoints rejects at once; scaled 3 -> 0 -> 3 it
// converges each way.
func TestServiceRejectAndScale(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("scaled", 3))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	svc := service(t, ns, "scaled", nil)
	from := podNS(&clients[0])
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	hostname(t, from, vip)
	scale(t, ns, "scaled", 0)
	eventually(t, 30*time.Second, "connections refused at once", func() error {
		start := time.Now()
		_, err := probe.HTTPGet(from, vip, "/hostname")
		if err == nil {
			return errors.New("still answered")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			return fmt.Errorf("%v after %s, want an immediate refusal", err, time.Since(start))
		}
		return nil
	})
	scale(t, ns, "scaled", 3)
	seen := map[string]bool{}
	eventually(t, 30*time.Second, "all 3 new backends reached", func() error {
		name, err := probe.HTTPGet(from, vip, "/hostname")
		if err != nil {
			return err
		}
		seen[name] = true
		if len(seen) < 3 {
			return fmt.Errorf("reached %v", seen)
		}
		return nil
	})
}

// A UDP client keeps working, on the same socket, after its backend pod is
// replaced (stale conntrack entries are cleared).
func TestServiceUDPClientSurvivesBackendReplacement(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	backends := deploy(t, ns, netexecDeployment("dns", 1))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	svc := service(t, ns, "dns", nil)
	hostname(t, podNS(&clients[0]), net.JoinHostPort(svc.Spec.ClusterIP, "80"))
	conn, err := probe.Dial(podNS(&clients[0]), "udp", net.JoinHostPort(svc.Spec.ClusterIP, "81"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() (string, error) {
		_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := conn.Write([]byte("hostname")); err != nil {
			return "", err
		}
		b := make([]byte, 256)
		n, err := conn.Read(b)
		return string(b[:n]), err
	}
	var first string
	eventually(t, 30*time.Second, "UDP answer", func() (err error) { first, err = ask(); return err })
	if first != backends[0].Name {
		t.Fatalf("answered by %q, want %s", first, backends[0].Name)
	}
	if err := client.CoreV1().Pods(ns).Delete(context.Background(), backends[0].Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the replacement pod answers on the same socket", func() error {
		got, err := ask()
		if err != nil {
			return err
		}
		if got == first {
			return fmt.Errorf("still answered by the old pod")
		}
		return nil
	})
}

// Session affinity ClientIP sticks for its timeout, then lets go.
func TestServiceSessionAffinity(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("sticky", 3))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	svc := service(t, ns, "sticky", func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(3))}}
	})
	from, vip := podNS(&clients[0]), net.JoinHostPort(svc.Spec.ClusterIP, "80")
	first := hostname(t, from, vip)
	for range 20 {
		if got, err := probe.HTTPGet(from, vip, "/hostname"); err != nil || got != first {
			t.Fatalf("affinity broke: %q then %q (%v)", first, got, err)
		}
	}
	seen := map[string]bool{first: true}
	for range 10 {
		time.Sleep(3200 * time.Millisecond)
		got, err := probe.HTTPGet(from, vip, "/hostname")
		if err != nil {
			t.Fatal(err)
		}
		if seen[got] = true; len(seen) > 1 {
			return
		}
	}
	t.Fatalf("after 10 timeouts still only %v", seen)
}
