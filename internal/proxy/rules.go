package proxy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// Table is the nftables table the proxy owns.
const Table = "flatnet-proxy"

// Names of the fixed objects of the table.
const (
	servicesChain       = "services"
	masqChain           = "masquerading"
	markMasqChain       = "mark-for-masquerade"
	rejectChecksChain   = "reject-checks"
	rejectChain         = "reject-chain"
	serviceIPsMap       = "service-ips"
	serviceNodePortsMap = "service-nodeports"
	noEndpointsMap      = "no-endpoint-services"
	noEndpointNodePorts = "no-endpoint-nodeports"
	clusterIPsSet       = "cluster-ips"
	hairpinSet          = "hairpin"
	masqBit             = "0x4000"
)

// builder collects one sync's transaction and remembers which chains and
// sets it made, so the caller can delete the ones that are no longer needed.
type builder struct {
	tx      *knftables.Transaction
	cfg     *Config
	chains  map[string]bool
	sets    map[string]bool
	hairpin map[netip.Addr]bool
	rules   int
	elems   int
	cur     *portObjects // the Service port being built, nil for the base
}

// portObjects is what one Service port put into the table, so that a later
// partial sync can take exactly that out again.
type portObjects struct {
	sp       *ServicePort
	eps      []Endpoint // as received, before selection
	chains   []string
	elements []mapElement
	sets     []string // affinity sets
	hairpin  []netip.Addr
	rules    int
}

type mapElement struct {
	m   string
	key []string
}

func newBuilder(tx *knftables.Transaction, cfg *Config) *builder {
	return &builder{tx: tx, cfg: cfg, chains: map[string]bool{}, sets: map[string]bool{}, hairpin: map[netip.Addr]bool{}}
}

func (b *builder) chain(name string) {
	if !b.chains[name] {
		b.chains[name] = true
		b.tx.Add(&knftables.Chain{Name: name})
		if b.cur != nil {
			b.cur.chains = append(b.cur.chains, name)
		}
	}
}

func (b *builder) rule(chain string, parts ...any) {
	b.rules++
	b.tx.Add(&knftables.Rule{Chain: chain, Rule: knftables.Concat(parts...)})
}

func (b *builder) element(m string, key []string, verdict string) {
	b.elems++
	if b.cur != nil {
		b.cur.elements = append(b.cur.elements, mapElement{m: m, key: key})
	}
	b.tx.Add(&knftables.Element{Map: m, Key: key, Value: []string{verdict}})
}

// base declares the objects every ruleset has: hooks, maps, the masquerade
// and reject machinery; baseRules fills them. Each base chain only dispatches into maps, so the work
// per packet does not grow with the number of Services.
func (b *builder) base() {
	tx, addr := b.tx, b.cfg.Family.addrType()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("flatnet service proxy (" + b.cfg.Family.String() + ")")})
	for _, m := range []struct{ name, typ, comment string }{
		{serviceIPsMap, addr + " . inet_proto . inet_service : verdict", "ClusterIP, external and load-balancer IPs of Services with endpoints"},
		{serviceNodePortsMap, "inet_proto . inet_service : verdict", "NodePorts of Services with endpoints"},
		{noEndpointsMap, addr + " . inet_proto . inet_service : verdict", "Service IPs without usable endpoints: reject or drop"},
		{noEndpointNodePorts, "inet_proto . inet_service : verdict", "NodePorts without usable endpoints: reject or drop"},
	} {
		tx.Add(&knftables.Map{Name: m.name, Type: m.typ, Comment: knftables.PtrTo(m.comment)})
	}
	tx.Add(&knftables.Set{Name: clusterIPsSet, Type: addr, Comment: knftables.PtrTo("every ClusterIP: unknown ports are rejected")})
	tx.Add(&knftables.Set{Name: hairpinSet, Type: addr + " . " + addr, Comment: knftables.PtrTo("endpoint . endpoint: a pod reaching itself through a Service")})

	hook := func(name string, typ knftables.BaseChainType, h knftables.BaseChainHook, prio knftables.BaseChainPriority) {
		b.chains[name] = true
		tx.Add(&knftables.Chain{Name: name, Type: knftables.PtrTo(typ), Hook: knftables.PtrTo(h), Priority: knftables.PtrTo(prio)})
	}
	hook("nat-prerouting", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority)
	hook("nat-output", knftables.NATType, knftables.OutputHook, knftables.DNATPriority)
	hook("nat-postrouting", knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority)
	hook("filter-input", knftables.FilterType, knftables.InputHook, knftables.FilterPriority+"-10")
	hook("filter-forward", knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority+"-10")
	hook("filter-output", knftables.FilterType, knftables.OutputHook, knftables.FilterPriority+"-10")
	for _, c := range []string{servicesChain, masqChain, markMasqChain, rejectChecksChain, rejectChain} {
		b.chain(c)
	}
}

// baseRules fills the fixed chains (after the caller flushed the table).
func (b *builder) baseRules() {
	ip := b.cfg.Family.ip()
	b.rule("nat-prerouting", "jump", servicesChain)
	b.rule("nat-output", "jump", servicesChain)
	b.rule("nat-postrouting", "jump", masqChain)
	b.rule("filter-input", "jump", rejectChecksChain)
	b.rule("filter-forward", "ct state invalid drop")
	b.rule("filter-forward", "jump", rejectChecksChain)
	b.rule("filter-output", "jump", rejectChecksChain)

	// Traffic to a ClusterIP from outside the cluster CIDR (a node, the
	// outside) is masqueraded: one rule here for every Service rather than
	// one in each Service's chain (a third of the rules of a full sync; a
	// packet to a ClusterIP without endpoints is rejected or dropped anyway).
	switch {
	case b.cfg.MasqueradeAll:
		b.rule(servicesChain, ip, "daddr", "@", clusterIPsSet, "jump", markMasqChain)
	case b.cfg.ClusterCIDR.IsValid():
		b.rule(servicesChain, ip, "daddr", "@", clusterIPsSet, ip, "saddr !=", b.cfg.ClusterCIDR.String(), "jump", markMasqChain)
	}
	b.rule(servicesChain, ip, "daddr . meta l4proto . th dport vmap", "@", serviceIPsMap)
	b.rule(servicesChain, "fib daddr type local", ip, "daddr !=", b.cfg.Family.loopback(), "meta l4proto . th dport vmap", "@", serviceNodePortsMap)
	b.rule(markMasqChain, "meta mark set meta mark or", masqBit)
	b.rule(masqChain, "ct status dnat", ip, "saddr .", ip, "daddr", "@", hairpinSet, "jump", markMasqChain)
	b.rule(masqChain, "meta mark and", masqBit, "== 0 return")
	b.rule(masqChain, "meta mark set meta mark xor", masqBit)
	b.rule(masqChain, "masquerade fully-random")
	b.rule(rejectChecksChain, "ct state new", ip, "daddr . meta l4proto . th dport vmap", "@", noEndpointsMap)
	b.rule(rejectChecksChain, "ct state new fib daddr type local meta l4proto . th dport vmap", "@", noEndpointNodePorts)
	b.rule(rejectChecksChain, "ct state new", ip, "daddr", "@", clusterIPsSet, "goto", rejectChain)
	if b.cfg.Family == IPv6 {
		// A pod client is always on the node that rejects it, so the
		// error comes back while its connect() still holds the socket.
		// Over IPv6 the TCP stack then only keeps the ICMPv6 error as a
		// soft error (TcpExtLockDroppedIcmps counts it) and the pod waits
		// for its SYN retransmit, 1 s later; a RST is queued to the socket
		// and refuses at once. Over IPv4 the ICMP error refuses at once
		// (both measured from a lab pod with curl).
		b.rule(rejectChain, "meta l4proto tcp reject with tcp reset")
	}
	b.rule(rejectChain, "reject")
}

// servicePort adds the chains, rules and map elements of one Service port
// and returns what it added.
func (b *builder) servicePort(sp *ServicePort, eps []Endpoint) *portObjects {
	b.cur = &portObjects{sp: sp, eps: eps}
	defer func() { b.cur = nil }()
	before := b.rules
	b.buildPort(sp, eps)
	b.cur.rules = b.rules - before
	return b.cur
}

func (b *builder) buildPort(sp *ServicePort, eps []Endpoint) {
	cfg := b.cfg
	proto, port := sp.Protocol(), strconv.Itoa(int(sp.Port))
	vip := sp.ClusterIP.String()
	b.tx.Add(&knftables.Element{Set: clusterIPsSet, Key: []string{vip}})
	b.elems++

	all := usable(eps, false, cfg.NodeZone, sp.TrafficDistributed)
	cluster := all
	if sp.InternalLocal {
		cluster = usable(eps, true, "", false)
	}
	// Cluster traffic: the ClusterIP.
	switch {
	case len(cluster) > 0:
		b.lbChain(svcChain(sp), sp, cluster)
		b.element(serviceIPsMap, []string{vip, proto, port}, "goto "+svcChain(sp))
	case len(all) > 0: // internalTrafficPolicy Local without a local endpoint
		b.element(noEndpointsMap, []string{vip, proto, port}, "drop")
	default:
		b.element(noEndpointsMap, []string{vip, proto, port}, "goto "+rejectChain)
	}
	if !sp.HasExternal() {
		return
	}
	// External traffic: NodePort, externalIPs, load-balancer IPs.
	var target string
	if len(all) == 0 {
		target = ""
	} else {
		target = extChain(sp)
		b.externalChain(sp, all)
	}
	external := func(ip string) {
		key := []string{ip, proto, port}
		switch {
		case target == "":
			b.element(noEndpointsMap, key, "goto "+rejectChain)
		case len(sp.SourceRanges) > 0:
			fw := "fw-" + strings.TrimPrefix(extChain(sp), "ext-")
			b.chain(fw)
			for _, r := range sp.SourceRanges { // one rule each: no anonymous set
				b.rule(fw, b.cfg.Family.ip(), "saddr", r.String(), "goto", target)
			}
			b.rule(fw, "drop")
			b.element(serviceIPsMap, key, "goto "+fw)
		default:
			b.element(serviceIPsMap, key, "goto "+target)
		}
	}
	for _, ip := range sp.ExternalIPs {
		external(ip.String())
	}
	if sp.NodePort != 0 {
		key := []string{proto, strconv.Itoa(int(sp.NodePort))}
		if target == "" {
			b.element(noEndpointNodePorts, key, "goto "+rejectChain)
		} else {
			b.element(serviceNodePortsMap, key, "goto "+target)
		}
	}
}

// externalChain is the entry for traffic from outside: with policy Cluster it
// is masqueraded and balanced over every endpoint; with policy Local it keeps
// the client's address and goes to this node's endpoints only (dropped when
// there are none), except traffic from pods and from the node itself, which
// is treated as cluster traffic, as upstream does.
func (b *builder) externalChain(sp *ServicePort, all []Endpoint) {
	ext := extChain(sp)
	b.chain(ext)
	if !sp.ExternalLocal {
		b.rule(ext, "jump", markMasqChain)
		if sp.InternalLocal { // the ClusterIP chain holds local endpoints only
			lb := "svx-" + strings.TrimPrefix(svcChain(sp), "svc-")
			b.lbChain(lb, sp, all)
			b.rule(ext, "goto", lb)
		} else {
			b.rule(ext, "goto", svcChain(sp))
		}
		return
	}
	clusterTarget := svcChain(sp)
	if sp.InternalLocal {
		clusterTarget = "svx-" + strings.TrimPrefix(svcChain(sp), "svc-")
		b.lbChain(clusterTarget, sp, all)
	}
	if b.cfg.ClusterCIDR.IsValid() {
		b.rule(ext, b.cfg.Family.ip(), "saddr", b.cfg.ClusterCIDR.String(), "goto", clusterTarget)
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

// lbChain balances over eps at random, after the session-affinity
// shortcuts.
//
// The choice is a cascade, not a numgen vmap: rule i takes the packet with
// probability 1/(N-i) ("numgen random mod (N-i) == 0"), which is uniform
// over the N endpoints and needs no anonymous set. Anonymous sets (one per
// vmap rule) cost the kernel ~0.8 ms each to create: 10,000 Services took
// 8.7 s to load with them and 0.67 s without (measured with nft -f).
func (b *builder) lbChain(name string, sp *ServicePort, eps []Endpoint) {
	b.chain(name)
	affinity := sp.AffinityTimeout > 0
	for _, e := range eps {
		b.hairpin[e.IP] = true
		if b.cur != nil {
			b.cur.hairpin = append(b.cur.hairpin, e.IP)
		}
		if affinity {
			b.endpointChain(sp, e)
			b.rule(name, b.cfg.Family.ip(), "saddr", "@", affinitySet(sp, e), "goto", epChain(sp, e))
		}
	}
	target := func(e Endpoint) []any {
		if affinity {
			return []any{"goto", epChain(sp, e)}
		}
		return []any{"meta l4proto", sp.Protocol(), "dnat to", e.String()}
	}
	for i, e := range eps {
		if left := len(eps) - i; left > 1 {
			b.rule(name, append([]any{"numgen random mod", left, "== 0"}, target(e)...)...)
		} else {
			b.rule(name, target(e)...)
		}
	}
}

// endpointChain (only for session affinity) records the client in the
// endpoint's affinity set and DNATs to it.
func (b *builder) endpointChain(sp *ServicePort, e Endpoint) {
	name := epChain(sp, e)
	if b.chains[name] {
		return
	}
	b.chain(name)
	set := affinitySet(sp, e)
	if !b.sets[set] {
		b.sets[set] = true
		if b.cur != nil {
			b.cur.sets = append(b.cur.sets, set)
		}
		secs := int(sp.AffinityTimeout.Seconds())
		b.tx.Add(&knftables.Set{Name: set, Type: b.cfg.Family.addrType(), Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(sp.AffinityTimeout), Comment: knftables.PtrTo(fmt.Sprintf("clients of %s (%ds affinity)", e, secs))})
	}
	b.rule(name, "update", "@", set, "{", b.cfg.Family.ip(), "saddr }")
	b.rule(name, "meta l4proto", sp.Protocol(), "dnat to", e.String())
}

// hairpinElements fills the set of (endpoint . endpoint) pairs: a DNATed
// packet whose source and destination are the same endpoint is a pod
// reaching itself through a Service, and is masqueraded so that the reply
// comes back through this node.
func (b *builder) hairpinElements() {
	for ip := range b.hairpin {
		b.tx.Add(&knftables.Element{Set: hairpinSet, Key: []string{ip.String(), ip.String()}})
		b.elems++
	}
}
