package policy_test

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Builders of policies, short enough that a case reads like its YAML.

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	bothTypes   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

type spec = networkingv1.NetworkPolicySpec
type in = networkingv1.NetworkPolicyIngressRule
type out = networkingv1.NetworkPolicyEgressRule
type peer = networkingv1.NetworkPolicyPeer
type port = networkingv1.NetworkPolicyPort

func np(ns, name string, s spec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: s}
}

// labels is a selector of matchLabels pairs ({} when none).
func labels(kv ...string) metav1.LabelSelector {
	s := metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func expr(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func podPeer(s metav1.LabelSelector) peer { return peer{PodSelector: &s} }

func nsPeer(s metav1.LabelSelector) peer { return peer{NamespaceSelector: &s} }

func bothPeer(ns, pod metav1.LabelSelector) peer {
	return peer{NamespaceSelector: &ns, PodSelector: &pod}
}

func block(cidr string, except ...string) peer {
	return peer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func proto(p corev1.Protocol) *corev1.Protocol { return &p }

var (
	tcp  = proto(corev1.ProtocolTCP)
	udp  = proto(corev1.ProtocolUDP)
	sctp = proto(corev1.ProtocolSCTP)
)

func num(p *corev1.Protocol, n int) port {
	v := intstr.FromInt32(int32(n))
	return port{Protocol: p, Port: &v}
}

func named(p *corev1.Protocol, name string) port {
	v := intstr.FromString(name)
	return port{Protocol: p, Port: &v}
}

func span(p *corev1.Protocol, first, last int) port {
	v, end := intstr.FromInt32(int32(first)), int32(last)
	return port{Protocol: p, Port: &v, EndPort: &end}
}

func allOf(p *corev1.Protocol) port { return port{Protocol: p} }
