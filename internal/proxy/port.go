package proxy

import (
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// portBuilder adds one Service port's part of a sync's transaction and
// records in rec everything it adds (chains, map elements, affinity sets,
// shared objects it uses, hairpin endpoints, rules), so that a later
// partial sync can take exactly that out again. The base ruleset is the
// builder's own and is recorded nowhere.
type portBuilder struct {
	*builder
	rec *portObjects
}

// chain adds a chain of the Service port's own.
func (b *portBuilder) chain(name string) {
	if !b.chains[name] {
		b.chains[name] = true
		b.tx.Add(&knftables.Chain{Name: name})
		b.rec.chains = append(b.rec.chains, name)
	}
}

func (b *portBuilder) rule(chain string, parts ...any) {
	b.rules++
	b.rec.rules++
	b.tx.Add(&knftables.Rule{Chain: chain, Rule: knftables.Concat(parts...)})
}

// element adds a verdict-map element, commented with the Service port's
// name so that the table says which Service an address belongs to.
func (b *portBuilder) element(m string, key []string, verdict string) {
	b.rec.elements = append(b.rec.elements, mapElement{m: m, key: key})
	b.add(m, &knftables.Element{Map: m, Key: key, Value: []string{verdict}, Comment: knftables.PtrTo(b.rec.sp.Name.String())})
}

// servicePort adds the chains, rules and map elements of one Service port
// and returns what it added.
func (b *builder) servicePort(sp *ServicePort, eps []Endpoint) *portObjects {
	pb := &portBuilder{builder: b, rec: &portObjects{sp: sp, eps: eps}}
	pb.buildPort(sp, eps)
	return pb.rec
}

func (b *portBuilder) buildPort(sp *ServicePort, eps []Endpoint) {
	key := []string{sp.ClusterIP.String(), sp.Protocol(), strconv.Itoa(int(sp.Port))}
	b.add(clusterIPsSet, &knftables.Element{Set: clusterIPsSet, Key: key[:1:1]})
	all := usable(eps, false, b.cfg.NodeZone, sp.TrafficDistributed)
	b.clusterIP(sp, key, eps, all)
	if sp.HasExternal() {
		b.external(sp, all)
	}
}

// clusterIP adds the ClusterIP's elements, keyed by key (address .
// protocol . port): balanced over the usable endpoints (the local ones
// with internal policy Local), dropped when only other nodes have some,
// rejected when there are none.
func (b *portBuilder) clusterIP(sp *ServicePort, key []string, eps, all []Endpoint) {
	cluster := all
	if sp.InternalLocal {
		cluster = usable(eps, true, "", false)
	}
	switch {
	case len(cluster) > 0 && sp.AffinityTimeout > 0:
		b.lbChain(svcChain(sp), sp, cluster)
		b.element(serviceIPsMap, key, "goto "+svcChain(sp))
	case len(cluster) > 0:
		b.element(serviceIPsMap, key, "goto "+b.slots(clusterLB, key, cluster))
	case len(all) > 0: // internalTrafficPolicy Local without a local endpoint
		b.element(noEndpointsMap, key, "drop")
	default:
		b.element(noEndpointsMap, key, "goto "+rejectChain)
	}
}

// external adds the elements of external traffic: NodePort, externalIPs,
// load-balancer IPs. With policy Cluster and nothing else to check, it is
// balanced by shared chains as the ClusterIP is, masqueraded; otherwise by
// a chain of the Service port's own.
func (b *portBuilder) external(sp *ServicePort, all []Endpoint) {
	proto, port := sp.Protocol(), strconv.Itoa(int(sp.Port))
	shared := sp.AffinityTimeout == 0 && !sp.ExternalLocal && !sp.InternalLocal && len(sp.SourceRanges) == 0
	var target string
	if len(all) > 0 && !shared {
		target = extChain(sp)
		b.externalChain(sp, all)
	}
	for _, ip := range sp.ExternalIPs {
		key := []string{ip.String(), proto, port}
		switch {
		case len(all) == 0:
			b.element(noEndpointsMap, key, "goto "+rejectChain)
		case shared:
			b.element(serviceIPsMap, key, "goto "+b.slots(masqLB, key, all))
		case len(sp.SourceRanges) > 0:
			b.element(serviceIPsMap, key, "goto "+b.firewall(sp, target))
		default:
			b.element(serviceIPsMap, key, "goto "+target)
		}
	}
	if sp.NodePort != 0 {
		key := []string{proto, strconv.Itoa(int(sp.NodePort))}
		switch {
		case len(all) == 0:
			b.element(noEndpointNodePorts, key, "goto "+rejectChain)
		case shared:
			b.element(serviceNodePortsMap, key, "goto "+b.slots(nodePortLB, key, all))
		default:
			b.element(serviceNodePortsMap, key, "goto "+target)
		}
	}
}

// firewall is the chain that lets only loadBalancerSourceRanges through to
// target, one rule per range (no anonymous set), made once per port.
func (b *portBuilder) firewall(sp *ServicePort, target string) string {
	fw := "fw-" + strings.TrimPrefix(extChain(sp), "ext-")
	if b.chains[fw] {
		return fw
	}
	b.chain(fw)
	for _, r := range sp.SourceRanges {
		b.rule(fw, b.cfg.Family.IP(), "saddr", r.String(), "goto", target)
	}
	b.rule(fw, "drop")
	return fw
}

// externalChain is the entry for traffic from outside: with policy Cluster it
// is masqueraded and balanced over every endpoint; with policy Local it keeps
// the client's address and goes to this node's endpoints only (dropped when
// there are none), except traffic from pods and from the node itself, which
// is treated as cluster traffic, as upstream does.
func (b *portBuilder) externalChain(sp *ServicePort, all []Endpoint) {
	ext := extChain(sp)
	b.chain(ext)
	// The chain balancing over all endpoints: the ClusterIP's own unless
	// that one holds the local endpoints only.
	clusterTarget := svcChain(sp)
	if sp.InternalLocal {
		clusterTarget = "svx-" + strings.TrimPrefix(svcChain(sp), "svc-")
	}
	b.lbChain(clusterTarget, sp, all)
	if !sp.ExternalLocal {
		b.rule(ext, "jump", markMasqChain)
		b.rule(ext, "goto", clusterTarget)
		return
	}
	if b.cfg.ClusterCIDR.IsValid() {
		b.rule(ext, b.cfg.Family.IP(), "saddr", b.cfg.ClusterCIDR.String(), "goto", clusterTarget)
	}
	b.rule(ext, "fib saddr type local jump", markMasqChain)
	b.rule(ext, "fib saddr type local goto", clusterTarget)
	local := usable(all, true, "", false)
	if len(local) == 0 {
		b.rule(ext, "drop")
		return
	}
	b.lbChain(localChain(sp), sp, local)
	b.rule(ext, "goto", localChain(sp))
}
