package proxy

import (
	"net/netip"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
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
	tx      *nft.Tx
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
	// Element additions wait here, per set in the order the sets first
	// got one, until addElements puts them at the end of the transaction:
	// nft then gets one command per set (see package nft).
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
func newBuilder(tx *nft.Tx, cfg *Config, shared map[string]sharedObject) *builder {
	b := &builder{tx: tx, cfg: cfg, chains: map[string]bool{}, sets: map[string]bool{}, hairpin: map[netip.Addr]bool{},
		shared: map[string]sharedObject{}, fixedRules: map[string]int{}}
	for name, o := range shared {
		b.shared[name] = o
	}
	return b
}

// fixedChain adds a chain of the base ruleset.
func (b *builder) fixedChain(name string) {
	b.chains[name] = true
	b.tx.Add(&knftables.Chain{Name: name})
}

// fixedRule adds a rule to a chain of the base ruleset.
func (b *builder) fixedRule(chain string, parts ...any) {
	b.rules++
	b.fixedRules[chain]++
	b.tx.Add(&knftables.Rule{Chain: chain, Rule: knftables.Concat(parts...)})
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
	tx, fam := b.tx, b.cfg.Family
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("flatnet service proxy (" + b.cfg.Family.String() + ")")})
	for _, m := range []struct{ name, comment string }{
		{serviceIPsMap, "ClusterIP, external and load-balancer IPs of Services with endpoints"},
		{serviceNodePortsMap, "NodePorts of Services with endpoints"},
		{noEndpointsMap, "Service IPs without usable endpoints: reject or drop"},
		{noEndpointNodePorts, "NodePorts without usable endpoints: reject or drop"},
	} {
		tx.Add(&knftables.Map{Name: m.name, Type: setType(fam, m.name), Comment: knftables.PtrTo(m.comment)})
	}
	tx.Add(&knftables.Set{Name: clusterIPsSet, Type: setType(fam, clusterIPsSet), Comment: knftables.PtrTo("every ClusterIP: unknown ports are rejected")})
	tx.Add(&knftables.Set{Name: hairpinSet, Type: setType(fam, hairpinSet), Comment: knftables.PtrTo("endpoint . endpoint: a pod reaching itself through a Service")})

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
		b.fixedChain(c)
	}
}

// baseRules fills the fixed chains (after the caller flushed the table).
func (b *builder) baseRules() {
	ip := b.cfg.Family.IP()
	b.fixedRule("nat-prerouting", "jump", servicesChain)
	b.fixedRule("nat-output", "jump", servicesChain)
	b.fixedRule("nat-postrouting", "jump", masqChain)
	b.fixedRule("filter-input", "jump", rejectChecksChain)
	b.fixedRule("filter-forward", "ct state invalid drop")
	b.fixedRule("filter-forward", "jump", rejectChecksChain)
	b.fixedRule("filter-output", "jump", rejectChecksChain)

	// Traffic to a ClusterIP from outside the cluster CIDR (a node, the
	// outside) is masqueraded: one rule here for every Service rather than
	// one in each Service's chain (a third of the rules of a full sync; a
	// packet to a ClusterIP without endpoints is rejected or dropped anyway).
	switch {
	case b.cfg.MasqueradeAll:
		b.fixedRule(servicesChain, ip, "daddr", "@", clusterIPsSet, "jump", markMasqChain)
	case b.cfg.ClusterCIDR.IsValid():
		b.fixedRule(servicesChain, ip, "daddr", "@", clusterIPsSet, ip, "saddr !=", b.cfg.ClusterCIDR.String(), "jump", markMasqChain)
	}
	b.fixedRule(servicesChain, ip, "daddr . meta l4proto . th dport vmap", "@", serviceIPsMap)
	b.fixedRule(servicesChain, "fib daddr type local", ip, "daddr !=", b.cfg.Family.Loopback(), "meta l4proto . th dport vmap", "@", serviceNodePortsMap)
	b.fixedRule(markMasqChain, "meta mark set meta mark or", masqBit)
	b.fixedRule(masqChain, "ct status dnat", ip, "saddr .", ip, "daddr", "@", hairpinSet, "jump", markMasqChain)
	b.fixedRule(masqChain, "meta mark and", masqBit, "== 0 return")
	b.fixedRule(masqChain, "meta mark set meta mark xor", masqBit)
	b.fixedRule(masqChain, "masquerade fully-random")
	b.fixedRule(rejectChecksChain, "ct state new", ip, "daddr . meta l4proto . th dport vmap", "@", noEndpointsMap)
	b.fixedRule(rejectChecksChain, "ct state new fib daddr type local meta l4proto . th dport vmap", "@", noEndpointNodePorts)
	b.fixedRule(rejectChecksChain, "ct state new", ip, "daddr", "@", clusterIPsSet, "goto", rejectChain)
	if b.cfg.Family == IPv6 {
		// A pod client is always on the node that rejects it, so the
		// error comes back while its connect() still holds the socket.
		// Over IPv6 the TCP stack then only keeps the ICMPv6 error as a
		// soft error (TcpExtLockDroppedIcmps counts it) and the pod waits
		// for its SYN retransmit, 1 s later; a RST is queued to the socket
		// and refuses at once. Over IPv4 the ICMP error refuses at once
		// (both measured from a lab pod with curl).
		b.fixedRule(rejectChain, "meta l4proto tcp reject with tcp reset")
	}
	b.fixedRule(rejectChain, "reject")
}

// setType is the nft type of the proxy's set or map name, known from the
// name alone: the fixed ones, and the endpoint maps of balance.go; "" for
// the affinity sets, whose elements only packets add.
func setType(fam Family, name string) string {
	addr := fam.AddrType()
	switch {
	case name == serviceIPsMap || name == noEndpointsMap:
		return addr + " . inet_proto . inet_service : verdict"
	case name == serviceNodePortsMap || name == noEndpointNodePorts:
		return "inet_proto . inet_service : verdict"
	case name == clusterIPsSet:
		return addr
	case name == hairpinSet:
		return addr + " . " + addr
	case strings.HasPrefix(name, nodePortEndpointsMap+"-"):
		return "inet_proto . inet_service : " + addr + " . inet_service"
	case strings.HasPrefix(name, endpointsMap+"-"):
		return addr + " . inet_proto . inet_service : " + addr + " . inet_service"
	}
	return ""
}
