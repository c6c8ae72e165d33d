package proxy

import (
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// Table is the nftables table the proxy owns.
const Table = "flatnet-proxy"

// Names of the fixed objects of the table.
const (
	servicesChain        = "services"
	masqChain            = "masquerading"
	markMasqChain        = "mark-for-masquerade"
	rejectChecksChain    = "reject-checks"
	rejectChain          = "reject-chain"
	serviceIPsMap        = "service-ips"
	serviceNodePortsMap  = "service-nodeports"
	noEndpointsMap       = "no-endpoint-services"
	noEndpointNodePorts  = "no-endpoint-nodeports"
	clusterIPsSet        = "cluster-ips"
	hairpinSet           = "hairpin"
	endpointsMap         = "endpoints"          // endpoints-0, endpoints-1, ...: see balance.go
	nodePortEndpointsMap = "nodeport-endpoints" // the same for NodePorts
	masqBit              = "0x4000"
)

// builder collects one sync's transaction and remembers which chains and
// sets it made, so the caller can delete the ones that are no longer needed.
type builder struct {
	tx      *knftables.Transaction
	cfg     *Config
	chains  map[string]bool
	sets    map[string]bool
	hairpin map[netip.Addr]bool
	// the shared chains and maps (see balance.go) the table has or this
	// transaction adds
	shared     map[string]sharedObject
	rules      int
	elems      int
	fixedRules map[string]int // rules per fixed chain
	cur        *portObjects   // the Service port being built, nil for the base
	// Element additions wait here, per set in the order the sets first
	// got one, until addElements puts them at the end of the transaction:
	// nft then gets one command per set (see NewNFTables).
	pending  map[string][]*knftables.Element
	setOrder []string
}

// portObjects is what one Service port put into the table, so that a later
// partial sync can take exactly that out again.
type portObjects struct {
	sp       *ServicePort
	eps      []Endpoint // as received, before selection
	chains   []string
	elements []mapElement
	sets     []string // affinity sets
	shared   []string // shared chains and maps it uses
	hairpin  []netip.Addr
	rules    int
}

type mapElement struct {
	m   string
	key []string
}

// newBuilder starts a transaction on a table that has the shared objects in
// shared (nil for none).
func newBuilder(tx *knftables.Transaction, cfg *Config, shared map[string]sharedObject) *builder {
	b := &builder{tx: tx, cfg: cfg, chains: map[string]bool{}, sets: map[string]bool{}, hairpin: map[netip.Addr]bool{},
		shared: map[string]sharedObject{}, fixedRules: map[string]int{}}
	for name, o := range shared {
		b.shared[name] = o
	}
	return b
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
	if b.cur == nil {
		b.fixedRules[chain]++
	}
	b.tx.Add(&knftables.Rule{Chain: chain, Rule: knftables.Concat(parts...)})
}

// The element is commented with the Service port's name, so that the
// table says which Service an address belongs to.
func (b *builder) element(m string, key []string, verdict string) {
	e := &knftables.Element{Map: m, Key: key, Value: []string{verdict}}
	if b.cur != nil {
		b.cur.elements = append(b.cur.elements, mapElement{m: m, key: key})
		e.Comment = knftables.PtrTo(b.cur.sp.Name.String())
	}
	b.add(m, e)
}

// add queues an element addition to set (or map) name.
func (b *builder) add(name string, e *knftables.Element) {
	b.elems++
	if b.pending == nil {
		b.pending = map[string][]*knftables.Element{}
	}
	if _, ok := b.pending[name]; !ok {
		b.setOrder = append(b.setOrder, name)
	}
	b.pending[name] = append(b.pending[name], e)
}

// addElements ends the transaction with the queued element additions, set
// by set. The chains they point to are added by then, and the deletions
// of old elements and chains come before them.
func (b *builder) addElements() {
	for _, name := range b.setOrder {
		for _, e := range b.pending[name] {
			b.tx.Add(e)
		}
	}
	b.pending, b.setOrder = nil, nil
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
	b.add(clusterIPsSet, &knftables.Element{Set: clusterIPsSet, Key: []string{vip}})

	all := usable(eps, false, cfg.NodeZone, sp.TrafficDistributed)
	cluster := all
	if sp.InternalLocal {
		cluster = usable(eps, true, "", false)
	}
	// Cluster traffic: the ClusterIP.
	affinity := sp.AffinityTimeout > 0
	switch {
	case len(cluster) > 0 && affinity:
		b.lbChain(svcChain(sp), sp, cluster)
		b.element(serviceIPsMap, []string{vip, proto, port}, "goto "+svcChain(sp))
	case len(cluster) > 0:
		key := []string{vip, proto, port}
		b.element(serviceIPsMap, key, "goto "+b.slots(clusterLB, key, cluster))
	case len(all) > 0: // internalTrafficPolicy Local without a local endpoint
		b.element(noEndpointsMap, []string{vip, proto, port}, "drop")
	default:
		b.element(noEndpointsMap, []string{vip, proto, port}, "goto "+rejectChain)
	}
	if !sp.HasExternal() {
		return
	}
	// External traffic: NodePort, externalIPs, load-balancer IPs. With
	// policy Cluster and nothing else to check, it is balanced by shared
	// chains as the ClusterIP is, masqueraded; otherwise by a chain of the
	// Service port's own.
	shared := !affinity && !sp.ExternalLocal && !sp.InternalLocal && len(sp.SourceRanges) == 0
	var target string
	if len(all) > 0 && !shared {
		target = extChain(sp)
		b.externalChain(sp, all)
	}
	external := func(ip string) {
		key := []string{ip, proto, port}
		switch {
		case len(all) == 0:
			b.element(noEndpointsMap, key, "goto "+rejectChain)
		case shared:
			b.element(serviceIPsMap, key, "goto "+b.slots(masqLB, key, all))
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

// externalChain is the entry for traffic from outside: with policy Cluster it
// is masqueraded and balanced over every endpoint; with policy Local it keeps
// the client's address and goes to this node's endpoints only (dropped when
// there are none), except traffic from pods and from the node itself, which
// is treated as cluster traffic, as upstream does.
func (b *builder) externalChain(sp *ServicePort, all []Endpoint) {
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
