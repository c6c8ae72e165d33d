package policy

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// everything is every address of the index's family.
func (ix *index) everything() AddrRange {
	if ix.fam == nft.IPv6 {
		return everything(netip.IPv6Unspecified())
	}
	return everything(netip.IPv4Unspecified())
}

// peerRanges are the addresses a rule's from (or to) list allows, in the
// policy's namespace ns: every address when the list is empty; the
// addresses of the pods its selectors pick, on every node; the ranges of
// its ipBlocks but their excepts.
func (ix *index) peerRanges(ns string, peers []networkingv1.NetworkPolicyPeer) []AddrRange {
	if len(peers) == 0 {
		return []AddrRange{ix.everything()}
	}
	var out []AddrRange
	for _, p := range peers {
		if p.IPBlock != nil {
			out = append(out, ix.ipBlock(p.IPBlock)...)
			continue
		}
		for _, pod := range ix.peerSelected(ns, p) {
			for _, ip := range pod.ips {
				out = append(out, single(ip))
			}
		}
	}
	return out
}

// peerPods are the pods a rule's from (or to) list allows: every pod when
// it is empty, the pods its selectors pick, the pods whose address an
// ipBlock holds (egress named ports are resolved on them).
func (ix *index) peerPods(ns string, peers []networkingv1.NetworkPolicyPeer) []*podInfo {
	if len(peers) == 0 {
		return ix.pods
	}
	seen := map[*podInfo]bool{}
	var out []*podInfo
	add := func(p *podInfo) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, peer := range peers {
		if peer.IPBlock == nil {
			for _, p := range ix.peerSelected(ns, peer) {
				add(p)
			}
			continue
		}
		block := ix.ipBlock(peer.IPBlock)
		for _, p := range ix.pods {
			if block.contains(p.ips[0]) {
				add(p)
			}
		}
	}
	return out
}

// peerSelected are the pods one selector peer picks: podSelector alone in
// the policy's namespace, namespaceSelector alone all pods of the
// namespaces it picks, both the pods of those namespaces it picks (AND).
func (ix *index) peerSelected(ns string, p networkingv1.NetworkPolicyPeer) []*podInfo {
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return nil // the API server refuses such a peer
	}
	podSel := labels.Everything()
	if p.PodSelector != nil {
		podSel = ix.selector("peer podSelector", p.PodSelector)
	}
	if p.NamespaceSelector == nil {
		return ix.selected(ns, podSel)
	}
	nsSel := ix.selector("peer namespaceSelector", p.NamespaceSelector)
	var out []*podInfo
	for name := range ix.byNS {
		if nsSel.Matches(ix.namespaceLabels(name)) {
			out = append(out, ix.selected(name, podSel)...)
		}
	}
	return out
}

// ipBlock is the addresses of an ipBlock of the index's family (none for
// one of the other family): its CIDR but its excepts.
func (ix *index) ipBlock(b *networkingv1.IPBlock) addrSet {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		ix.problems = append(ix.problems, fmt.Sprintf("ipBlock %q: %v", b.CIDR, err))
		return nil
	}
	if !ix.ofFamily(p.Addr()) {
		return nil
	}
	set := addrSet{rangeOf(p)}
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			// an except that cannot be read takes the whole block out:
			// allowing what it should have excepted would open a hole
			ix.problems = append(ix.problems, fmt.Sprintf("ipBlock %s except %q: %v", b.CIDR, e, err))
			return nil
		}
		if ix.ofFamily(ex.Addr()) {
			set = set.minus(rangeOf(ex))
		}
	}
	return set
}

func (ix *index) ofFamily(a netip.Addr) bool { return a.Is4() == (ix.fam == nft.IPv4) }

// Proto is a transport protocol a NetworkPolicy port names.
type Proto uint8

const (
	TCP Proto = iota + 1
	UDP
	SCTP
)

// Protos are the protocols, in the order of their sets and rules.
var Protos = []Proto{TCP, UDP, SCTP}

func (p Proto) String() string { return [...]string{"", "tcp", "udp", "sctp"}[p] }

// protoOf reads a port's protocol; none (TCP) when unset.
func protoOf(p *corev1.Protocol) (Proto, bool) {
	if p == nil {
		return TCP, true
	}
	switch *p {
	case corev1.ProtocolTCP:
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return 0, false
}

// portOf reads one port of a rule: its protocol, and either a range of
// port numbers (every port when none is given; port to endPort) or the
// name of a port, resolved per pod by namedPorts. ok is false for a port
// that matches nothing (a protocol or number the API server refuses).
func portOf(np networkingv1.NetworkPolicyPort) (proto Proto, r PortRange, name string, ok bool) {
	if proto, ok = protoOf(np.Protocol); !ok {
		return 0, r, "", false
	}
	if np.Port == nil {
		return proto, allPorts, "", true
	}
	if np.Port.Type == intstr.String {
		return proto, r, np.Port.StrVal, true
	}
	first := np.Port.IntVal
	last := first
	if np.EndPort != nil {
		last = *np.EndPort
	}
	if first < 1 || first > 65535 || last < first || last > 65535 {
		return 0, r, "", false
	}
	return proto, PortRange{uint16(first), uint16(last)}, "", true
}

// namedPorts are the numbers of the ports named name, of protocol proto,
// of a pod's containers (and of its sidecars: init containers that keep
// running).
func namedPorts(pod *corev1.Pod, name string, proto Proto) []uint16 {
	var out []uint16
	match := func(cs []corev1.Container, sidecarsOnly bool) {
		for _, c := range cs {
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				pp, ok := protoOf(&p.Protocol)
				if p.Protocol == "" {
					pp, ok = TCP, true
				}
				if ok && p.Name == name && pp == proto && p.ContainerPort >= 1 && p.ContainerPort <= 65535 {
					out = append(out, uint16(p.ContainerPort))
				}
			}
		}
	}
	match(pod.Spec.Containers, false)
	match(pod.Spec.InitContainers, true)
	return out
}
