package policy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type policyCase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
}

// cases cover every feature the API documents, alone and together.
var cases = []policyCase{
	{"no policies", nil},
	{"deny all ingress in x", []*networkingv1.NetworkPolicy{np("x", "deny", spec{PolicyTypes: ingressOnly})}},
	{"deny all egress in x", []*networkingv1.NetworkPolicy{np("x", "deny", spec{PolicyTypes: egressOnly})}},
	{"deny all both ways everywhere", []*networkingv1.NetworkPolicy{
		np("x", "deny", spec{PolicyTypes: bothTypes}), np("y", "deny", spec{PolicyTypes: bothTypes}), np("z", "deny", spec{PolicyTypes: bothTypes})}},
	{"allow all ingress (an empty rule)", []*networkingv1.NetworkPolicy{np("x", "all", spec{Ingress: []in{{}}})}},
	{"allow all egress, deny ingress", []*networkingv1.NetworkPolicy{np("y", "all", spec{PolicyTypes: bothTypes, Egress: []out{{}}})}},
	{"from the same namespace", []*networkingv1.NetworkPolicy{np("x", "same", spec{Ingress: []in{{From: []peer{podPeer(labels())}}}})}},
	{"from namespace y (namespaceSelector)", []*networkingv1.NetworkPolicy{np("x", "y", spec{Ingress: []in{{From: []peer{nsPeer(labels("ns", "y"))}}}})}},
	{"AND: pods b of namespace y, in one peer", []*networkingv1.NetworkPolicy{
		np("x", "and", spec{PodSelector: labels("pod", "a"), Ingress: []in{{From: []peer{bothPeer(labels("ns", "y"), labels("pod", "b"))}}}})}},
	{"OR: namespace y, or pods b here, two peers", []*networkingv1.NetworkPolicy{
		np("x", "or", spec{PodSelector: labels("pod", "a"), Ingress: []in{{From: []peer{nsPeer(labels("ns", "y")), podPeer(labels("pod", "b"))}}}})}},
	{"matchExpressions", []*networkingv1.NetworkPolicy{
		np("x", "in", spec{PodSelector: expr("pod", metav1.LabelSelectorOpIn, "a", "b"),
			Ingress: []in{{From: []peer{bothPeer(expr("ns", metav1.LabelSelectorOpNotIn, "x"), expr("app", metav1.LabelSelectorOpExists))}}}}),
		np("y", "notapp", spec{PodSelector: expr("app", metav1.LabelSelectorOpDoesNotExist),
			Ingress: []in{{From: []peer{nsPeer(expr("team", metav1.LabelSelectorOpExists))}}}})}},
	{"ipBlock with except, both families", []*networkingv1.NetworkPolicy{
		np("x", "block", spec{PodSelector: labels("pod", "a"), Ingress: []in{{From: []peer{
			block("10.244.0.0/16", "10.244.1.0/24"), block("fd00:244::/40", "fd00:244:1::/48")}}}})}},
	{"egress to the world but one address", []*networkingv1.NetworkPolicy{
		np("y", "world", spec{PolicyTypes: egressOnly, Egress: []out{{To: []peer{
			block("192.168.100.0/24", "192.168.100.5/32"), block("2001:db8::/64", "2001:db8::5/128")}}}})}},
	{"ports: TCP 80, UDP 81, SCTP 80, every UDP port from y", []*networkingv1.NetworkPolicy{
		np("z", "ports", spec{Ingress: []in{
			{Ports: []port{num(nil, 80), num(udp, 81), num(sctp, 80)}},
			{From: []peer{nsPeer(labels("ns", "y"))}, Ports: []port{allOf(udp)}}}})}},
	{"named ports, ingress: per pod, sidecars, not init containers", []*networkingv1.NetworkPolicy{
		np("z", "named", spec{Ingress: []in{{Ports: []port{named(nil, "http"), named(udp, "serve-81-udp"), named(tcp, "metrics"), named(tcp, "early"),
			named(udp, "http"), named(sctp, "serve-81-tcp")}}}})}},
	{"a named port no pod has still isolates", []*networkingv1.NetworkPolicy{
		np("x", "nope", spec{Ingress: []in{{Ports: []port{named(tcp, "nope")}}}})}},
	{"named ports, egress: resolved on the peer", []*networkingv1.NetworkPolicy{
		np("x", "named", spec{PodSelector: labels("pod", "a"), PolicyTypes: egressOnly, Egress: []out{
			{To: []peer{nsPeer(labels("ns", "y"))}, Ports: []port{named(tcp, "http")}},
			{To: []peer{block("10.244.0.0/16", "10.244.1.0/24")}, Ports: []port{named(udp, "serve-80-udp")}},
			{Ports: []port{named(tcp, "metrics")}}}})}},
	{"endPort, overlapping ranges", []*networkingv1.NetworkPolicy{
		np("y", "range", spec{Ingress: []in{
			{Ports: []port{span(tcp, 80, 81)}},
			{From: []peer{nsPeer(labels("ns", "z"))}, Ports: []port{span(tcp, 81, 8080), span(udp, 79, 80)}},
			{From: []peer{podPeer(labels("pod", "c"))}, Ports: []port{num(tcp, 79), span(tcp, 79, 81)}}}})}},
	{"policyTypes defaults", []*networkingv1.NetworkPolicy{
		np("x", "egress-rules", spec{PodSelector: labels("pod", "a"), Egress: []out{{To: []peer{nsPeer(labels("ns", "y"))}}}}),
		np("y", "egress-only", spec{PodSelector: labels("pod", "b"), PolicyTypes: egressOnly,
			Ingress: []in{{}}, Egress: []out{{To: []peer{nsPeer(labels("ns", "z"))}}}}),
		np("z", "ingress-default", spec{PodSelector: labels("pod", "c")})}},
	{"additive: an except of one policy allowed by another", []*networkingv1.NetworkPolicy{
		np("x", "most", spec{Ingress: []in{{From: []peer{block("10.244.0.0/16", "10.244.2.0/24")}}}}),
		np("x", "one", spec{Ingress: []in{{From: []peer{block("10.244.2.13/32")}, Ports: []port{num(tcp, 81)}}}}),
		np("x", "more", spec{PodSelector: labels("pod", "b"), Ingress: []in{{From: []peer{nsPeer(labels("ns", "z"))}, Ports: []port{num(udp, 80)}}}})}},
	{"egress to every pod, and UDP 81 anywhere", []*networkingv1.NetworkPolicy{
		np("x", "pods", spec{PolicyTypes: egressOnly, Egress: []out{
			{To: []peer{nsPeer(labels())}}, {To: []peer{block("0.0.0.0/0"), block("::/0")}, Ports: []port{num(udp, 81)}}}})}},
	{"host-network and finished pods are no peers", []*networkingv1.NetworkPolicy{
		np("x", "a-only", spec{Ingress: []in{{From: []peer{podPeer(labels("pod", "a"))}}}}),
		np("z", "a-of-y", spec{Ingress: []in{{From: []peer{bothPeer(labels("ns", "y"), labels("pod", "a"))}}}})}},
	{"both ends isolated: x may send to y on 80, y takes 80 and 81 from x", []*networkingv1.NetworkPolicy{
		np("x", "out", spec{PolicyTypes: egressOnly, Egress: []out{{To: []peer{nsPeer(labels("ns", "y"))}, Ports: []port{num(tcp, 80)}}}}),
		np("y", "in", spec{Ingress: []in{{From: []peer{nsPeer(labels("ns", "x"))}, Ports: []port{num(tcp, 80), num(tcp, 81)}}}})}},
}

// endpoints are every address a probe starts or ends at, per family.
func endpoints(fam4 bool) []netip.Addr {
	var out []netip.Addr
	for _, p := range pods() {
		for _, ip := range p.Status.PodIPs {
			if a := netip.MustParseAddr(ip.IP); a.Is4() == fam4 && !p.Spec.HostNetwork {
				out = append(out, a)
			}
		}
	}
	for _, a := range outside {
		if a.Is4() == fam4 {
			out = append(out, a)
		}
	}
	for _, n := range nodes {
		for _, a := range n.addrs {
			if a.Is4() == fam4 {
				out = append(out, a)
			}
		}
	}
	return out
}

// probes are new connections between every two endpoints of which at
// least one is a pod: TCP, UDP and SCTP to ports 79, 80, 81 and 8080, and
// ICMP.
func probes() []tracePacket {
	var out []tracePacket
	for _, fam4 := range []bool{true, false} {
		eps := endpoints(fam4)
		icmp := corev1.Protocol("ICMP")
		if !fam4 {
			icmp = "ICMPv6"
		}
		for _, src := range eps {
			for _, dst := range eps {
				_, srcPod := location(src)
				_, dstPod := location(dst)
				if src == dst || !srcPod && !dstPod {
					continue
				}
				for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
					for _, port := range []int{79, 80, 81, 8080} {
						out = append(out, tracePacket{packet: packet{src, dst, proto, port}, ctState: "new"})
					}
				}
				out = append(out, tracePacket{packet: packet{src: src, dst: dst, proto: icmp}, ctState: "new", icmpType: "echo-request"})
			}
		}
	}
	return out
}

// Every case, every probe: the tables each node's engine writes let
// through exactly what the evaluator allows.
func TestTablesAgreeWithTheEvaluator(t *testing.T) {
	all := probes()
	for _, c := range cases {
		w := newWorld(t, c.policies)
		var diffs []string
		allowed := 0
		for _, p := range all {
			want, got := w.eval.allowed(p.packet), w.verdict(t, p)
			if want {
				allowed++
			}
			if want != got {
				diffs = append(diffs, fmt.Sprintf("  %s -> %s %s/%d: evaluator %v, tables %v", p.src, p.dst, p.proto, p.port, want, got))
			}
		}
		if len(diffs) > 0 {
			t.Errorf("%s: %d of %d probes differ:\n%s", c.name, len(diffs), len(all), strings.Join(diffs[:min(len(diffs), 25)], "\n"))
		}
		if c.policies != nil && allowed == len(all) && !strings.HasPrefix(c.name, "allow all ingress") {
			t.Errorf("%s: every probe is allowed: the case tests nothing", c.name)
		}
		t.Logf("%s: %d of %d probes allowed", c.name, allowed, len(all))
	}
}
