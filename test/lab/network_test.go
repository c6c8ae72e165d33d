package lab_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/lab"
	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
	"github.com/flatnet-io/flatnet/internal/workload"
)

// Six netexec pods spread over the three nodes: every pod reaches every
// other by pod IP over HTTP and UDP, and the server sees the client pod's
// own address (no NAT anywhere on the path).
func TestPodToPodAcrossNodesWithoutNAT(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("netexec", 6))
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	if len(perNode) != nodes {
		t.Fatalf("pods on %d nodes, want all %d: %v", len(perNode), nodes, perNode)
	}
	for _, from := range pods {
		for _, to := range pods {
			got, err := httpGet(podNS(&from), "http://"+net.JoinHostPort(to.Status.PodIP, "8080")+"/clientip")
			if err != nil {
				t.Errorf("HTTP %s (%s) -> %s (%s): %v", from.Name, from.Spec.NodeName, to.Name, to.Spec.NodeName, err)
				continue
			}
			if host(got) != from.Status.PodIP {
				t.Errorf("HTTP %s -> %s: server saw %s, want the client pod's IP %s", from.Name, to.Name, got, from.Status.PodIP)
			}
			got, err = probe.UDPRequest(podNS(&from), net.JoinHostPort(to.Status.PodIP, "8081"), "clientip")
			if err != nil {
				t.Errorf("UDP %s -> %s: %v", from.Name, to.Name, err)
				continue
			}
			if host(got) != from.Status.PodIP {
				t.Errorf("UDP %s -> %s: server saw %s, want %s", from.Name, to.Name, got, from.Status.PodIP)
			}
		}
	}
	if got, err := httpGet(podNS(&pods[0]), "http://"+net.JoinHostPort(pods[1].Status.PodIP, "8080")+"/hostname"); err != nil || got != pods[1].Name {
		t.Errorf("/hostname of %s: %q, %v", pods[1].Name, got, err)
	}
}

// A node reaches a pod on another node with its own address; a pod reaches
// the outside host, which sees the pod's node address (masquerade).
func TestNodeToPodAndPodToOutside(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("netexec", 3))
	nodeIPs := map[string]string{}
	for i := 1; i <= nodes; i++ {
		nodeIPs[layout.NodeName(i)] = lab.NodeIP(i).String()
	}
	for i := 1; i <= nodes; i++ {
		from := layout.NodeName(i)
		for _, to := range pods {
			if to.Spec.NodeName == from {
				continue
			}
			got, err := httpGet(netns.Path(layout.NS(from)), "http://"+net.JoinHostPort(to.Status.PodIP, "8080")+"/clientip")
			if err != nil {
				t.Fatalf("%s -> pod %s on %s: %v", from, to.Name, to.Spec.NodeName, err)
			}
			if host(got) != nodeIPs[from] {
				t.Errorf("%s -> pod %s: pod saw %s, want the node's own %s", from, to.Name, got, nodeIPs[from])
			}
		}
	}
	outsideTellsClient(t, "tcp4", ":9000")
	for _, p := range pods {
		c, err := probe.Dial(podNS(&p), "tcp", "172.30.0.1:9000", 3*time.Second)
		if err != nil {
			t.Fatalf("pod %s -> outside: %v", p.Name, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if host(string(b)) != nodeIPs[p.Spec.NodeName] {
			t.Errorf("outside saw %s from pod %s on %s, want the node's address %s", b, p.Name, p.Spec.NodeName, nodeIPs[p.Spec.NodeName])
		}
	}
}

// Scaling 6 -> 30 -> 0 -> 6 leaves exactly one IPAM claim and one veth per
// running pod on every node; deleting a pod releases its address and veth.
func TestScaleLeavesNoLeak(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	deploy(t, ns, netexecDeployment("scale", 6))
	for _, n := range []int32{30, 0, 6} {
		pods := scale(t, ns, "scale", n)
		assertNodeState(t, pods)
	}
	pods := waitReady(t, ns, "scale", 6)
	victim := pods[0]
	if err := client.CoreV1().Pods(ns).Delete(context.Background(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the deleted pod's address released", func() error {
		if _, err := client.CoreV1().Pods(ns).Get(context.Background(), victim.Name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("pod %s still exists", victim.Name)
		}
		for i := 1; i <= nodes; i++ {
			for _, ip := range ipamClaims(t, i) {
				if ip == victim.Status.PodIP && layout.NodeName(i) == victim.Spec.NodeName {
					return fmt.Errorf("%s still claimed", ip)
				}
			}
		}
		return nil
	})
	assertNodeState(t, waitReady(t, ns, "scale", 6))
}

// assertNodeState checks, per node, that IPAM claims and veths match the
// running pods exactly (this test's pods are the only ones in the lab).
func assertNodeState(t *testing.T, pods []corev1.Pod) {
	t.Helper()
	eventually(t, time.Minute, "IPAM and veths match running pods", func() error {
		for i := 1; i <= nodes; i++ {
			var want []string // every IP of every pod: one per family
			onNode := 0
			for _, p := range pods {
				if p.Spec.NodeName == layout.NodeName(i) {
					onNode++
					for _, ip := range p.Status.PodIPs {
						want = append(want, ip.IP)
					}
				}
			}
			got := ipamClaims(t, i)
			sort.Strings(want)
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				return fmt.Errorf("%s: IPAM claims %v, running pods %v", layout.NodeName(i), got, want)
			}
			if v := podVeths(t, i); v != onNode {
				return fmt.Errorf("%s: %d veths for %d pods", layout.NodeName(i), v, onNode)
			}
		}
		return nil
	})
}

// Restarting flatnetd keeps an established pod-to-pod TCP connection alive
// and every UDP flow through a ClusterIP on its backend (the restarted
// proxy clears only conntrack entries no endpoint answers), and the routes
// converge again.
func TestFlatnetdRestartKeepsConnections(t *testing.T) {
	requireLab(t)
	ns := namespace(t)
	pods := deploy(t, ns, netexecDeployment("restart", 3))
	from, to := pods[0], pods[1]
	addr := net.JoinHostPort(to.Status.PodIP, "8080")
	c, err := probe.Dial(podNS(&from), "tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := probe.Request(c, addr, "/hostname"); err != nil {
		t.Fatalf("before restart: %v", err)
	}
	vip := net.JoinHostPort(service(t, ns, "restart", nil).Spec.ClusterIP, "81")
	hostname(t, podNS(&from), net.JoinHostPort(host(vip), "80"))
	flows := udpFlows(t, podNS(&from), vip, 6)
	before := make([]string, len(flows))
	for i, ask := range flows {
		if before[i] = ask(); before[i] == "" {
			t.Fatalf("UDP flow %d through %s: no answer", i, vip)
		}
	}
	for i := 1; i <= nodes; i++ {
		pid, err := readPid(fmt.Sprintf("flatnetd-%s", layout.NodeName(i)))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	// While the agents are down the data path keeps working ...
	if got, err := probe.Request(c, addr, "/hostname"); err != nil || got != to.Name {
		t.Fatalf("with flatnetd stopped: %q, %v", got, err)
	}
	// ... and `lab up` starts them again; routes converge.
	if out, err := flatnet("lab", "up", "--nodes", fmt.Sprint(nodes)).CombinedOutput(); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, "routes to the other nodes' pod CIDRs, IPv4 and IPv6", func() error {
		for i := 1; i <= nodes; i++ {
			for _, fam := range []string{"-4", "-6"} {
				out, err := flatnet("lab", "exec", "--node", layout.NodeName(i), "--", "ip", fam, "route", "show", "proto", "74").CombinedOutput()
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				if n := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; n != nodes-1 {
					return fmt.Errorf("%s has %d flatnet routes (ip %s), want %d:\n%s", layout.NodeName(i), n, fam, nodes-1, out)
				}
			}
		}
		return nil
	})
	if got, err := probe.Request(c, addr, "/hostname"); err != nil || got != to.Name {
		t.Fatalf("after restart, on the same connection: %q, %v", got, err)
	}
	for i, ask := range flows {
		if got := ask(); got != before[i] {
			t.Errorf("UDP flow %d through %s moved from %s to %q across the restart", i, vip, before[i], got)
		}
	}
}

// udpFlows opens n UDP sockets from a namespace to addr (a netexec UDP
// port); each ask sends "hostname" on its own socket and returns the
// answer ("" for none), so each is one conntrack flow.
func udpFlows(t *testing.T, nsPath, addr string, n int) []func() string {
	t.Helper()
	var out []func() string
	for range n {
		conn, err := probe.Dial(nsPath, "udp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		out = append(out, func() string {
			buf := make([]byte, 256)
			for range 3 {
				_ = conn.SetDeadline(time.Now().Add(time.Second))
				if _, err := conn.Write([]byte("hostname")); err != nil {
					continue
				}
				if n, err := conn.Read(buf); err == nil {
					return string(buf[:n])
				}
			}
			return ""
		})
	}
	return out
}

func readPid(component string) (int, error) {
	out, err := os.ReadFile(filepath.Join(layout.Dir, "pids", component))
	if err != nil {
		return 0, err
	}
	var pid int
	_, err = fmt.Sscan(string(out), &pid)
	return pid, err
}

// outsideTellsClient runs a TCP server on the outside host (the switch
// namespace) that writes each client's address and closes, until the test
// ends.
func outsideTellsClient(t *testing.T, network, addr string) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(outsideNS(), func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = workload.Serve(t.Context(), ln, func(c net.Conn) {
			_, _ = io.WriteString(c, c.RemoteAddr().String())
			c.Close()
		})
	}()
}
