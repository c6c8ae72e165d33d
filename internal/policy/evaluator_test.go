package policy_test

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The evaluator: whether the cluster lets a packet through, read from the
// API documentation of networking.k8s.io/v1 (the comments of its types and
// the NetworkPolicy concept page), one packet at a time, never from the
// enforcement code, which it does not call:
//
//   - a pod is isolated for ingress (egress) when a NetworkPolicy in its
//     namespace selects it and has Ingress (Egress) among its policyTypes;
//     unset policyTypes mean Ingress, plus Egress when there are egress
//     rules;
//   - traffic to a pod is allowed if it is not isolated for ingress, OR the
//     source is the pod's local node, OR it matches at least one ingress
//     rule of the policies that select it; traffic from a pod likewise with
//     egress rules (and to its own node: "traffic to and from the node
//     where a Pod runs is always allowed"); a connection needs both (the
//     source pod's egress and the destination pod's ingress);
//   - pods on the host network are neither selected nor peers (the
//     documentation leaves them undefined), nor are finished pods;
//   - a rule matches when its from/to list is empty or one peer matches,
//     and its ports list is empty or one port matches;
//   - a peer: ipBlock: the address is in cidr and in no except; podSelector
//     alone: a pod of the policy's namespace with those labels;
//     namespaceSelector alone: any pod of a namespace with those labels;
//     both: a pod with those labels in such a namespace;
//   - a port: the protocol (TCP when unset) matches, and the port is
//     unset, or equals port, or lies in port..endPort, or (a name) is the
//     number of a port of that name and protocol of the destination pod;
//   - replies of allowed connections are allowed (stateful).
type evaluator struct {
	pods       []*corev1.Pod
	namespaces []*corev1.Namespace
	policies   []*networkingv1.NetworkPolicy
	nodeAddrs  map[string][]netip.Addr // node name → its addresses
}

type packet struct {
	src, dst netip.Addr
	proto    corev1.Protocol // TCP, UDP, SCTP, or "ICMP"
	port     int
}

func (e *evaluator) allowed(p packet) bool {
	return e.egressAllowed(p) && e.ingressAllowed(p)
}

// pod is the running pod that has address a, not on the host's network.
func (e *evaluator) pod(a netip.Addr) *corev1.Pod {
	for _, p := range e.pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if netip.MustParseAddr(ip.IP) == a {
				return p
			}
		}
	}
	return nil
}

func (e *evaluator) ingressAllowed(p packet) bool {
	dst := e.pod(p.dst)
	if dst == nil || slices.Contains(e.nodeAddrs[dst.Spec.NodeName], p.src) {
		return true
	}
	isolated := false
	for _, np := range e.policies {
		if np.Namespace != dst.Namespace || !matches(&np.Spec.PodSelector, dst.Labels) || !hasType(np, networkingv1.PolicyTypeIngress) {
			continue
		}
		isolated = true
		for _, r := range np.Spec.Ingress {
			if e.peersMatch(np.Namespace, r.From, p.src) && e.portsMatch(r.Ports, p) {
				return true
			}
		}
	}
	return !isolated
}

func (e *evaluator) egressAllowed(p packet) bool {
	src := e.pod(p.src)
	if src == nil || slices.Contains(e.nodeAddrs[src.Spec.NodeName], p.dst) {
		return true
	}
	isolated := false
	for _, np := range e.policies {
		if np.Namespace != src.Namespace || !matches(&np.Spec.PodSelector, src.Labels) || !hasType(np, networkingv1.PolicyTypeEgress) {
			continue
		}
		isolated = true
		for _, r := range np.Spec.Egress {
			if e.peersMatch(np.Namespace, r.To, p.dst) && e.portsMatch(r.Ports, p) {
				return true
			}
		}
	}
	return !isolated
}

func hasType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	if len(np.Spec.PolicyTypes) > 0 {
		return slices.Contains(np.Spec.PolicyTypes, t)
	}
	return t == networkingv1.PolicyTypeIngress || len(np.Spec.Egress) > 0
}

func (e *evaluator) peersMatch(policyNS string, peers []networkingv1.NetworkPolicyPeer, a netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			if inBlock(peer.IPBlock, a) {
				return true
			}
			continue
		}
		pod := e.pod(a)
		if pod == nil {
			continue
		}
		podOK := peer.PodSelector == nil || matches(peer.PodSelector, pod.Labels)
		var nsOK bool
		if peer.NamespaceSelector == nil {
			nsOK = pod.Namespace == policyNS
		} else {
			nsOK = matches(peer.NamespaceSelector, e.namespaceLabels(pod.Namespace))
		}
		if podOK && nsOK {
			return true
		}
	}
	return false
}

func inBlock(b *networkingv1.IPBlock, a netip.Addr) bool {
	if !netip.MustParsePrefix(b.CIDR).Contains(a) {
		return false
	}
	for _, ex := range b.Except {
		if netip.MustParsePrefix(ex).Contains(a) {
			return false
		}
	}
	return true
}

func (e *evaluator) namespaceLabels(name string) map[string]string {
	for _, ns := range e.namespaces {
		if ns.Name == name {
			return ns.Labels
		}
	}
	return nil
}

// portsMatch: a named port is looked up on the destination of the packet.
func (e *evaluator) portsMatch(ports []networkingv1.NetworkPolicyPort, p packet) bool {
	if len(ports) == 0 {
		return true
	}
	for _, np := range ports {
		proto := corev1.ProtocolTCP
		if np.Protocol != nil {
			proto = *np.Protocol
		}
		if proto != p.proto {
			continue
		}
		switch {
		case np.Port == nil:
			return true
		case np.Port.Type == intstr.Int && np.EndPort != nil:
			if int(np.Port.IntVal) <= p.port && p.port <= int(*np.EndPort) {
				return true
			}
		case np.Port.Type == intstr.Int:
			if int(np.Port.IntVal) == p.port {
				return true
			}
		default:
			if dst := e.pod(p.dst); dst != nil && hasNamedPort(dst, np.Port.StrVal, proto, p.port) {
				return true
			}
		}
	}
	return false
}

func hasNamedPort(pod *corev1.Pod, name string, proto corev1.Protocol, port int) bool {
	containers := slices.Clone(pod.Spec.Containers)
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			containers = append(containers, c) // a sidecar
		}
	}
	for _, c := range containers {
		for _, cp := range c.Ports {
			cproto := cp.Protocol
			if cproto == "" {
				cproto = corev1.ProtocolTCP
			}
			if cp.Name == name && cproto == proto && int(cp.ContainerPort) == port {
				return true
			}
		}
	}
	return false
}

// matches is label selector semantics: every matchLabels pair, and every
// expression (In, NotIn, Exists, DoesNotExist); an empty selector matches
// everything.
func matches(s *metav1.LabelSelector, l map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := l[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		v, ok := l[r.Key]
		switch r.Operator {
		case metav1.LabelSelectorOpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}
