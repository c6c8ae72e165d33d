package policy

import (
	"maps"
	"net/netip"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// Model is what one node enforces in one family: which of its pods are
// isolated in each direction, and what each of those may receive or send.
// Peers are address ranges; ports are disjoint ranges per protocol, each
// with the union of the peers every policy allows on it (policies are
// additive), so that each becomes elements of an interval set.
type Model struct {
	Family nft.Family
	// Ingress is keyed by the receiving pod of this node; its peers are
	// sources. Egress is keyed by the sending pod; its peers are
	// destinations.
	Ingress, Egress Direction
	// Problems are what could not be read (a selector, a CIDR) and was
	// taken to select nothing.
	Problems []string
	// Names are the pods of the cluster by address ("namespace/name"),
	// for the log: nil when no namespace asks for one.
	Names map[netip.Addr]string
}

// Direction is one direction's isolation and what it allows.
type Direction struct {
	// Isolated are the pods of this node that a policy of this direction
	// selects: they get only what some policy allows.
	Isolated []netip.Addr
	// Any allows a pod every protocol and port with the peers.
	Any map[netip.Addr]addrSet
	// Ports allows a pod, per protocol, the peers on ranges of ports.
	Ports map[Proto]map[netip.Addr][]PortPeers
	// Policies are, per isolated pod, the policies that isolate it
	// ("namespace/name", sorted): what its verdicts are counted against.
	Policies map[netip.Addr][]string
	// Logged are the isolated pods whose denied connections are logged:
	// their namespace is annotated policy.flatnet.io/log: "deny".
	Logged []netip.Addr
}

// Compute computes what node enforces in family fam.
func Compute(c *Cluster, node string, fam nft.Family) *Model {
	ix := newIndex(c, node, fam)
	b := &builder{ix: ix, in: newDirBuilder(), out: newDirBuilder()}
	for _, np := range c.Policies {
		b.policy(np)
	}
	slices.Sort(ix.problems)
	var names map[netip.Addr]string
	if slices.Contains(slices.Collect(maps.Values(ix.nsLog)), true) { // only the log reads them
		names = make(map[netip.Addr]string, len(ix.pods))
		for _, p := range ix.pods {
			for _, ip := range p.ips {
				names[ip] = p.pod.Namespace + "/" + p.pod.Name
			}
		}
	}
	return &Model{Family: fam, Ingress: b.in.finish(), Egress: b.out.finish(), Problems: slices.Compact(ix.problems), Names: names}
}

// PolicyTypes are the directions a policy isolates, with the API's
// defaulting: Ingress always, Egress when it has egress rules.
func PolicyTypes(spec *networkingv1.NetworkPolicySpec) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

type builder struct {
	ix      *index
	in, out *dirBuilder
}

func (b *builder) policy(np *networkingv1.NetworkPolicy) {
	what := "NetworkPolicy " + np.Namespace + "/" + np.Name
	var targets []*podInfo
	for _, p := range b.ix.selected(np.Namespace, b.ix.selector(what, &np.Spec.PodSelector)) {
		if p.local {
			targets = append(targets, p)
		}
	}
	if len(targets) == 0 {
		return
	}
	ingress, egress := PolicyTypes(&np.Spec)
	ref := np.Namespace + "/" + np.Name
	if ingress {
		b.in.isolate(ref, targets, b.ix.logged(np.Namespace))
		for _, r := range np.Spec.Ingress {
			b.ingressRule(np.Namespace, targets, r)
		}
	}
	if egress {
		b.out.isolate(ref, targets, b.ix.logged(np.Namespace))
		for _, r := range np.Spec.Egress {
			b.egressRule(np.Namespace, targets, r)
		}
	}
}

// ingressRule grants targets what one ingress rule allows; a named port
// is resolved on each target.
func (b *builder) ingressRule(ns string, targets []*podInfo, r networkingv1.NetworkPolicyIngressRule) {
	peers := b.ix.peerRanges(ns, r.From)
	if len(peers) == 0 {
		return
	}
	if len(r.Ports) == 0 {
		b.in.grantAny(targets, peers)
		return
	}
	for _, np := range r.Ports {
		proto, ports, name, ok := portOf(np)
		if !ok {
			continue
		}
		for _, t := range targets {
			if name == "" {
				b.in.grant(t, proto, ports, peers)
				continue
			}
			for _, n := range namedPorts(t.pod, name, proto) {
				b.in.grant(t, proto, PortRange{n, n}, peers)
			}
		}
	}
}

// egressRule grants targets what one egress rule allows; a named port is
// resolved on each peer pod, so it reaches pods only.
func (b *builder) egressRule(ns string, targets []*podInfo, r networkingv1.NetworkPolicyEgressRule) {
	if len(r.Ports) == 0 {
		b.out.grantAny(targets, b.ix.peerRanges(ns, r.To))
		return
	}
	var peers []AddrRange // of numbered ports, computed once
	resolved := false
	for _, np := range r.Ports {
		proto, ports, name, ok := portOf(np)
		switch {
		case !ok:
		case name == "":
			if !resolved {
				peers, resolved = b.ix.peerRanges(ns, r.To), true
			}
			for _, t := range targets {
				b.out.grant(t, proto, ports, peers)
			}
		default:
			for _, peer := range b.ix.peerPods(ns, r.To) {
				for _, n := range namedPorts(peer.pod, name, proto) {
					for _, t := range targets {
						b.out.grant(t, proto, PortRange{n, n}, singles(peer.ips))
					}
				}
			}
		}
	}
}

func singles(ips []netip.Addr) []AddrRange {
	out := make([]AddrRange, len(ips))
	for i, ip := range ips {
		out[i] = single(ip)
	}
	return out
}

// dirBuilder collects one direction's isolation and grants.
type dirBuilder struct {
	isolated map[netip.Addr][]string // the policies isolating each pod
	logged   map[netip.Addr]bool
	any      map[netip.Addr][]AddrRange
	ports    map[Proto]map[netip.Addr][]portGrant
}

func newDirBuilder() *dirBuilder {
	return &dirBuilder{isolated: map[netip.Addr][]string{}, logged: map[netip.Addr]bool{},
		any: map[netip.Addr][]AddrRange{}, ports: map[Proto]map[netip.Addr][]portGrant{}}
}

func (d *dirBuilder) isolate(policy string, targets []*podInfo, logged bool) {
	for _, t := range targets {
		for _, ip := range t.ips {
			d.isolated[ip] = append(d.isolated[ip], policy)
			if logged {
				d.logged[ip] = true
			}
		}
	}
}

func (d *dirBuilder) grantAny(targets []*podInfo, peers []AddrRange) {
	for _, t := range targets {
		for _, ip := range t.ips {
			d.any[ip] = append(d.any[ip], peers...)
		}
	}
}

func (d *dirBuilder) grant(t *podInfo, proto Proto, ports PortRange, peers []AddrRange) {
	if len(peers) == 0 {
		return
	}
	if d.ports[proto] == nil {
		d.ports[proto] = map[netip.Addr][]portGrant{}
	}
	for _, ip := range t.ips {
		d.ports[proto][ip] = append(d.ports[proto][ip], portGrant{ports, peers})
	}
}

func (d *dirBuilder) finish() Direction {
	out := Direction{Any: map[netip.Addr]addrSet{}, Ports: map[Proto]map[netip.Addr][]PortPeers{}, Policies: map[netip.Addr][]string{}}
	for ip, ps := range d.isolated {
		out.Isolated = append(out.Isolated, ip)
		slices.Sort(ps)
		out.Policies[ip] = slices.Compact(ps)
	}
	out.Isolated = sortAddrs(out.Isolated)
	for ip := range d.logged {
		out.Logged = append(out.Logged, ip)
	}
	out.Logged = sortAddrs(out.Logged)
	for ip, rs := range d.any {
		if set := union(rs...); len(set) > 0 {
			out.Any[ip] = set
		}
	}
	for proto, byPod := range d.ports {
		out.Ports[proto] = map[netip.Addr][]PortPeers{}
		for ip, gs := range byPod {
			out.Ports[proto][ip] = disjoint(gs)
		}
	}
	return out
}
