package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet-io/flatnet/internal/netns"
	"github.com/flatnet-io/flatnet/internal/probe"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// created sets a Service's creationTimestamp, minutes after epoch: the
// older of two Services claiming one address owns it.
func created(minutes int) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.CreationTimestamp = metav1.NewTime(epoch.Add(time.Duration(minutes) * time.Minute))
	}
}

func externalIPs(ips ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

// only asserts that every connection to addr reached backend.
func only(t *testing.T, from, addr, backend string) {
	t.Helper()
	if seen := spread(t, from, addr, 6); len(seen) != 1 || seen[backend] == 0 {
		t.Errorf("%s reached %v, want only %s", addr, seen, backend)
	}
}

// Services that claim one address (another's ClusterIP as an externalIP,
// one externalIP:port twice, an address both as externalIP and as the load
// balancer's, addresses nftables cannot key by) are settled by the
// ownership rule: every sync succeeds in the kernel, the older Service
// keeps the address, a ClusterIP is never hijacked, the loser gets a
// Warning Event, and bystanders are served throughout. Before the rule
// the kernel refused the second map key and every sync failed.
func TestConflictingAddressesDoNotStallTheProxy(t *testing.T) {
	e := newEnv(t, "")
	a, b, c, client := e.addPod("a"), e.addPod("b"), e.addPod("c"), e.addPod("client")
	for _, s := range []struct {
		name, vip string
		backend   *pod
		mods      []func(*corev1.Service)
	}{
		{"victim", "10.96.0.70", a, []func(*corev1.Service){created(2)}},
		{"hijacker", "10.96.0.71", b, []func(*corev1.Service){created(1), externalIPs("10.96.0.70")}},
		{"first", "10.96.0.72", a, []func(*corev1.Service){created(1), externalIPs("192.168.99.5")}},
		{"second", "10.96.0.73", b, []func(*corev1.Service){created(2), externalIPs("192.168.99.5")}},
		{"twice", "10.96.0.74", c, []func(*corev1.Service){created(3), externalIPs("192.168.99.6", "::ffff:192.168.99.7", "fe80::1%eth0"),
			func(s *corev1.Service) {
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.168.99.6"}}
			}}},
		{"bystander", "10.96.0.75", c, []func(*corev1.Service){created(4)}},
	} {
		e.proxier.UpdateService(svc(s.name, s.vip, s.mods...))
		e.proxier.UpdateSlice(slice(s.name, readyOn(s.backend, "node-1")))
	}
	e.sync()
	only(t, client.ns, "10.96.0.70:80", "a") // the victim's ClusterIP, though the hijacker is older
	only(t, client.ns, "10.96.0.71:80", "b")
	only(t, e.outside, "192.168.99.5:80", "a") // the older of the two
	only(t, client.ns, "10.96.0.73:80", "b")   // the loser keeps what is its own
	only(t, e.outside, "192.168.99.6:80", "c")
	only(t, e.outside, "192.168.99.7:80", "c") // the IPv4-mapped form is the IPv4 address
	only(t, client.ns, "10.96.0.75:80", "c")
	events := strings.Join(e.events.all(), "\n")
	for _, want := range []string{"ns/hijacker Warning AddressConflict", "ns/second Warning AddressConflict"} {
		if !strings.Contains(events, want) {
			t.Errorf("no event %q in:\n%s", want, events)
		}
	}
	for _, ev := range e.events.all() {
		if subject := strings.Fields(ev)[0]; subject != "ns/hijacker" && subject != "ns/second" {
			t.Errorf("event about a Service that lost nothing: %s", ev)
		}
	}

	// A partial sync of the Service that names 192.168.99.6 twice deletes
	// its elements once (the kernel refuses a second delete).
	e.proxier.UpdateSlice(slice("twice", readyOn(a, "node-1")))
	e.sync()
	only(t, e.outside, "192.168.99.6:80", "a")
	// The owner leaves: the other claimant takes the address over.
	e.proxier.DeleteService(svc("first", "10.96.0.72"))
	e.sync()
	only(t, e.outside, "192.168.99.5:80", "b")
	e.proxier.DeleteService(svc("victim", "10.96.0.70"))
	e.sync()
	only(t, e.outside, "10.96.0.70:80", "b") // no longer a ClusterIP: the externalIP is served
}

// A restarted proxier (flatnetd killed and started again) takes over the
// table without disturbing live flows: a TCP connection through a
// ClusterIP keeps working and every UDP flow keeps its backend, since the
// first sync clears only conntrack entries no usable endpoint answers.
// Before, the first sync treated every Service port as new and cleared
// all of its UDP flows, which then went to a random endpoint.
func TestFlowsSurviveARestart(t *testing.T) {
	e := newEnv(t, "")
	a, b, client := e.addPod("a"), e.addPod("b"), e.addPod("client")
	lines := func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "lines", Port: 82, Protocol: corev1.ProtocolTCP})
	}
	sl := slice("web", readyOn(a, "node-1"), readyOn(b, "node-1"))
	sl.Ports = append(sl.Ports, linesPort())
	e.proxier.UpdateService(svc("web", "10.96.0.80", lines))
	e.proxier.UpdateSlice(sl)
	e.serve(svc("gone", "10.96.0.81"), readyOn(a, "node-1"))
	toGone := udpSocket(t, client.ns, "10.96.0.81:81")
	if got := toGone(); got != "a" {
		t.Fatalf("UDP to the Service to be deleted: %q", got)
	}

	conn, err := probe.Dial(client.ns, "tcp", "10.96.0.80:82", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	say := func(line string) string {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintln(conn, line); err != nil {
			t.Fatalf("TCP connection broken: %v", err)
		}
		reply, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("TCP connection broken: %v", err)
		}
		return strings.Fields(reply)[0]
	}
	tcpBackend := say("before")
	var asks []func() string
	var before []string
	for range 8 {
		ask := udpSocket(t, client.ns, "10.96.0.80:81")
		asks = append(asks, ask)
		before = append(before, ask())
	}
	if slices.Contains(before, "") || len(slices.Compact(slices.Sorted(slices.Values(before)))) != 2 {
		t.Fatalf("8 UDP flows reached %v, want both endpoints", before)
	}

	e.stopProxiers()
	e.startProxiers()
	e.proxier.UpdateService(svc("web", "10.96.0.80", lines))
	e.proxier.UpdateSlice(sl)
	e.sync()

	if got := say("after"); got != tcpBackend {
		t.Errorf("the TCP connection moved from %s to %s", tcpBackend, got)
	}
	for i, ask := range asks {
		if got := ask(); got != before[i] {
			t.Errorf("UDP flow %d moved from %s to %q after the restart", i, before[i], got)
		}
	}
	// "gone" was deleted while no proxier ran: the restarted one read its
	// address back from the table and cleared its flow, which reached
	// the old endpoint until then.
	if got := toGone(); got != "" {
		t.Errorf("a UDP flow to a Service deleted during the restart still reaches %s", got)
	}
}

// The ruleset flushed or the table deleted behind the proxy's back (a
// distribution's nftables service restarting, an operator): the running
// proxier notices within its check interval and rewrites the table, and
// ClusterIPs answer again within 2 s.
func TestTableRestoredAfterAFlush(t *testing.T) {
	e := newEnv(t, "")
	a, client := e.addPod("a"), e.addPod("client")
	e.proxier.UpdateService(svc("web", "10.96.0.90"))
	e.proxier.UpdateSlice(slice("web", readyOn(a, "node-1")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = netns.Do(e.node, func() error { e.proxier.Run(ctx); return nil })
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitServed(t, client.ns, "10.96.0.90:80", "a", 5*time.Second)
	for _, damage := range [][]string{
		{"flush", "ruleset"},
		{"delete", "table", "ip", "flatnet-proxy"},
		{"flush", "chain", "ip", "flatnet-proxy", "services"},
	} {
		if out, err := exec.Command("nsenter", append([]string{"--net=" + e.node, "nft"}, damage...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", damage, err, out)
		}
		start := time.Now()
		waitServed(t, client.ns, "10.96.0.90:80", "a", 2*time.Second)
		t.Logf("nft %s: served again after %s", strings.Join(damage, " "), time.Since(start).Round(time.Millisecond))
	}
}

// waitServed waits until a TCP connection to addr reaches backend, trying
// a new connection every 100 ms, each given 250 ms (a SYN lost to a missing
// table would otherwise wait for its retransmit, 1 s later).
func waitServed(t *testing.T, from, addr, backend string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, err := probe.ReadAll(from, addr, 250*time.Millisecond)
		if err == nil && backendOf(r) == backend {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served by %s within %s: %q %v", addr, backend, within, r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
