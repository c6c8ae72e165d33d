package lab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
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

func outsideNS() string { return netns.Path(layout.NS("switch")) }

func nodeIndex(name string) int {
	var i int
	_, _ = fmt.Sscanf(name, "node-%d", &i)
	return i
}

// refusedNow asserts a TCP connect is refused within a second.
func refusedNow(t *testing.T, nsPath, addr string) {
	t.Helper()
	eventually(t, 30*time.Second, addr+" refused at once", func() error {
		start := time.Now()
		c, err := probe.Dial(nsPath, "tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			return fmt.Errorf("%v after %s", err, time.Since(start))
		}
		return nil
	})
}

// droppedNow asserts a TCP connect gets no answer.
func droppedNow(t *testing.T, nsPath, addr string) {
	t.Helper()
	c, err := probe.Dial(nsPath, "tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("%s: connected, want a silent drop", addr)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s: refused, want a silent drop", addr)
	}
}

// droppedOnceKnown asserts a TCP connect gets no answer once the client's
// node knows the Service's endpoints: until the EndpointSlice reaches it,
// the Service has none there and is refused, which is right too.
func droppedOnceKnown(t *testing.T, nsPath, addr string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		c, err := probe.Dial(nsPath, "tcp", addr, 2*time.Second)
		switch {
		case err == nil:
			c.Close()
			t.Fatalf("%s: connected, want a silent drop", addr)
		case !errors.Is(err, syscall.ECONNREFUSED):
			return // no answer: dropped
		case time.Now().After(deadline):
			t.Fatalf("%s: still refused after 30 s, want a silent drop once the endpoints are known", addr)
		}
	}
}

// One port number on two protocols; an unknown port of the ClusterIP is
// rejected; a pod reaches itself through its Service (hairpin).
func TestServicePortsProtocolsAndHairpin(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("dual", 1))
	svc := service(t, ns, "dual", func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{
			{Name: "tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)},
			{Name: "udp", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(8081)},
		}
	})
	self := podNS(&pods[0])
	if got := hostname(t, self, net.JoinHostPort(svc.Spec.ClusterIP, "53")); got != pods[0].Name {
		t.Fatalf("hairpin over TCP 53: %q", got)
	}
	if got, err := probe.UDPRequest(self, net.JoinHostPort(svc.Spec.ClusterIP, "53"), "hostname"); err != nil || got != pods[0].Name {
		t.Fatalf("UDP 53 (hairpin): %q, %v", got, err)
	}
	refusedNow(t, self, net.JoinHostPort(svc.Spec.ClusterIP, "9999"))
}

// externalTrafficPolicy Local: the client's address is kept, only nodes with
// an endpoint answer, the health-check node port says which; policy Cluster
// masquerades.
func TestServiceExternalTrafficPolicy(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("etp", 1))
	local := service(t, ns, "etp", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer // health-check node ports exist for LoadBalancer
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.Ports = s.Spec.Ports[:1]
	})
	cluster := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "etp-cluster"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "etp"},
		Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	cluster, err := client.CoreV1().Services(ns).Create(context.Background(), cluster, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	home := nodeIndex(pods[0].Spec.NodeName)
	other := home%nodes + 1
	homeIP, otherIP := lab.NodeIP(home).String(), lab.NodeIP(other).String()
	np := fmt.Sprint(local.Spec.Ports[0].NodePort)
	var seen string
	eventually(t, 30*time.Second, "Local NodePort on the pod's node", func() (err error) {
		seen, err = probe.HTTPGet(outsideNS(), net.JoinHostPort(homeIP, np), "/clientip")
		return err
	})
	if host(seen) != "172.30.0.1" {
		t.Errorf("policy Local: backend saw %s, want the outside host 172.30.0.1", seen)
	}
	droppedNow(t, outsideNS(), net.JoinHostPort(otherIP, np))
	hc := fmt.Sprint(local.Spec.HealthCheckNodePort)
	for ip, want := range map[string]int{homeIP: http.StatusOK, otherIP: http.StatusServiceUnavailable} {
		_, err := probe.HTTPGet(outsideNS(), net.JoinHostPort(ip, hc), "/")
		code := http.StatusOK
		if err != nil {
			code = http.StatusServiceUnavailable
			if !strings.Contains(err.Error(), "503") {
				t.Fatalf("health check on %s: %v", ip, err)
			}
		}
		if code != want {
			t.Errorf("health-check node port on %s: %d, want %d", ip, code, want)
		}
	}
	cnp := fmt.Sprint(cluster.Spec.Ports[0].NodePort)
	eventually(t, 30*time.Second, "Cluster NodePort on another node", func() (err error) {
		seen, err = probe.HTTPGet(outsideNS(), net.JoinHostPort(otherIP, cnp), "/clientip")
		return err
	})
	if host(seen) == "172.30.0.1" {
		t.Errorf("policy Cluster: backend saw the outside host's own address %s, want it masqueraded", seen)
	}
}

// internalTrafficPolicy Local: a client on the endpoint's node gets through,
// a client elsewhere is dropped.
func TestServiceInternalTrafficPolicyLocal(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("itp", 1))
	clients := deploy(t, ns, netexecDeployment("client", 3))
	svc := service(t, ns, "itp", func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	})
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	for _, c := range clients {
		if c.Spec.NodeName == pods[0].Spec.NodeName {
			hostname(t, podNS(&c), vip)
		} else {
			droppedOnceKnown(t, podNS(&c), vip)
		}
	}
}

// externalIPs and load-balancer ingress IPs from the outside host, with
// loadBalancerSourceRanges admitting or dropping the client.
func TestServiceExternalIPsAndLoadBalancer(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("ext", 1))
	service(t, ns, "ext", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"203.0.113.10"} })
	lb := func(name, ip, allowed string) {
		s := service(t, ns, "ext", func(s *corev1.Service) {
			s.Name = name
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{allowed}
		})
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
		if _, err := client.CoreV1().Services(ns).UpdateStatus(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	lb("ext-lb-open", "203.0.113.20", "172.30.0.1/32")
	lb("ext-lb-closed", "203.0.113.21", "198.51.100.0/24")
	// The outside host sends the external addresses to node-1, as a router would.
	for _, ip := range []string{"203.0.113.10", "203.0.113.20", "203.0.113.21"} {
		out, err := exec.Command("ip", "-n", layout.NS("switch"), "route", "replace", ip+"/32", "via", lab.NodeIP(1).String()).CombinedOutput()
		if err != nil {
			t.Fatalf("route in the outside host: %v %s", err, out)
		}
	}
	if got := hostname(t, outsideNS(), "203.0.113.10:80"); !strings.HasPrefix(got, "ext-") {
		t.Fatalf("externalIP answered %q", got)
	}
	if got := hostname(t, outsideNS(), "203.0.113.20:80"); !strings.HasPrefix(got, "ext-") {
		t.Fatalf("LB IP from an allowed source answered %q", got)
	}
	droppedNow(t, outsideNS(), "203.0.113.21:80")
}

// With no ready endpoint, a terminating pod that still serves keeps getting
// the Service's traffic until it is gone.
func TestServiceTerminatingEndpointFallback(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	labels := map[string]string{"app": "term"}
	createPod(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "term", Labels: labels}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr.To(int64(30)),
		Containers: []corev1.Container{{Name: "c", Image: agnhost,
			Args:  []string{"netexec", "--http-port=8080", "--udp-port=8081", "--delay-shutdown=10"},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
	}})
	clients := deploy(t, ns, netexecDeployment("client", 1))
	svc := service(t, ns, "term", nil)
	from, vip := podNS(&clients[0]), net.JoinHostPort(svc.Spec.ClusterIP, "80")
	hostname(t, from, vip)
	if err := client.CoreV1().Pods(ns).Delete(context.Background(), "term", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the slice now says ready=false, serving, terminating
	p, err := client.CoreV1().Pods(ns).Get(context.Background(), "term", metav1.GetOptions{})
	if err != nil || p.DeletionTimestamp == nil {
		t.Fatalf("pod should be terminating: %v", err)
	}
	if got, err := probe.HTTPGet(from, vip, "/hostname"); err != nil || got != "term" {
		t.Fatalf("during termination: %q, %v", got, err)
	}
}

// Headless and ExternalName Services get no rules; a type change to
// NodePort and a port change are applied.
func TestServiceIgnoredKindsAndChanges(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("chg", 1))
	clients := deploy(t, ns, netexecDeployment("client", 1))
	service(t, ns, "chg", func(s *corev1.Service) { s.Name = "headless"; s.Spec.ClusterIP = corev1.ClusterIPNone })
	if _, err := client.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "extname"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := service(t, ns, "chg", nil)
	from := podNS(&clients[0])
	hostname(t, from, net.JoinHostPort(svc.Spec.ClusterIP, "80"))
	out, err := flatnet("lab", "exec", "--node", "node-1", "--", "nft", "list", "table", "ip", "flatnet-proxy").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v %s", err, out)
	}
	for _, name := range []string{ns + "/headless/", ns + "/extname/"} {
		if strings.Contains(string(out), name) {
			t.Errorf("rules for %s exist", name)
		}
	}
	if !strings.Contains(string(out), ns+"/chg/tcp/http") {
		t.Errorf("no rules for the normal Service:\n%s", out)
	}
	svc, err = client.CoreV1().Services(ns).Get(context.Background(), "chg", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].Port = 8000
	if svc, err = client.CoreV1().Services(ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	hostname(t, from, net.JoinHostPort(svc.Spec.ClusterIP, "8000"))
	refusedNow(t, from, net.JoinHostPort(svc.Spec.ClusterIP, "80"))
	hostname(t, outsideNS(), net.JoinHostPort(lab.NodeIP(1).String(), fmt.Sprint(svc.Spec.Ports[0].NodePort)))
}
