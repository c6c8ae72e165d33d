package proxy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// Load balancing: how a packet for a Service address gets one of its
// endpoints at random.
//
// The common case (no session affinity) takes no chain or rule of its own.
// Slot i of every Service address is an element of map endpoints-i,
// "address . protocol . port : endpoint address . port", and chain slot-i
// DNATs by it:
//
//	dnat ip to ip daddr . meta l4proto . th dport map @endpoints-i
//
// A Service address with N endpoints has its verdict-map element send the
// packet to chain lb-N, which picks a slot with
// "numgen random mod N vmap { 0 : goto slot-0, ... }". So a Service costs
// the kernel 1+N map elements, these shared chains and maps exist once per
// endpoint count and slot in use, and a full sync is a few rules and one
// command per map (see package nft). NodePorts have the same under
// "protocol . port" (nodeport-endpoints-i, nodeport-slot-i,
// nodeport-lb-N), since their destination is any address of the node.
//
// Measured with `go run ./bench/proxy -services 10000` (2 endpoints each),
// on the same day as the chain-per-Service cascade it replaced (a chain of
// `numgen random mod k == 0 dnat` rules per Service, one command per
// element): the first full sync 0.97-1.07 s against 1.85-1.96 s, a sync
// after one change p50 27-38 ms against 93-96 ms. Naming the Service port in
// a comment on each verdict-map element (as kube-proxy does, so that the
// table says whose an address is) costs some of it back: 1.07-1.13 s and
// p50 49-50 ms.
//
// One map with the slot in its key ("... . numgen random mod N") would need
// a "typeof" map, and nft 1.0.6 cannot read such a map back from the kernel
// for a later rule ("conflicting protocols specified: ip vs. th"), so every
// sync after the first would fail; maps of plain types per slot have no
// such problem.
//
// The chain-per-Service cascade (lbChain) remains for what needs per-Service
// state or choices: session affinity, and external traffic with policy
// Local, an internal policy Local or source ranges.

// sharedChain kinds: the rules of chain lb-N and its variants.
const (
	clusterLB  = "lb"          // DNAT by the Service address
	masqLB     = "lb-masq"     // the same, masqueraded: external IPs with policy Cluster
	nodePortLB = "nodeport-lb" // DNAT by the NodePort, masqueraded
)

// Shared objects are deleted in tiers, each before what it points to.
const (
	tierLB   = iota // lb-N chains: point to slot chains
	tierSlot        // slot-i chains: point to endpoint maps
	tierMap         // endpoints-i maps
)

type sharedObject struct {
	tier  int
	rules int
}

// slots fills slot i of key (an address . protocol . port, or a protocol .
// port for a NodePort) with eps[i], and returns the shared chain that picks
// one of the len(eps) slots.
func (b *portBuilder) slots(kind string, key []string, eps []Endpoint) string {
	// What the port records, sized for it: an element per slot and the
	// verdict's; a map and a chain per slot and the lb chain.
	b.rec.elements = slices.Grow(b.rec.elements, len(eps)+1)
	b.rec.shared = slices.Grow(b.rec.shared, 2*len(eps)+1)
	b.rec.hairpin = slices.Grow(b.rec.hairpin, len(eps))
	for i, e := range eps {
		b.noteHairpin(e)
		m := b.slot(kind == nodePortLB, i)
		b.rec.elements = append(b.rec.elements, mapElement{m: m, key: key})
		b.add(m, &knftables.Element{Map: m, Key: key, Value: []string{e.IP.String(), strconv.Itoa(int(e.Port))}})
	}
	return b.lbShared(kind, len(eps))
}

// slot makes sure endpoint map i and its slot chain exist and returns the
// map.
func (b *portBuilder) slot(nodePort bool, i int) string {
	m, chain := sharedName(endpointsMap, i), sharedName(slotChainPrefix, i)
	if nodePort {
		m, chain = sharedName(nodePortEndpointsMap, i), sharedName(nodePortSlotChainPrefix, i)
	}
	if b.use(m, tierMap) {
		b.tx.Add(&knftables.Map{Name: m, Type: setType(b.cfg.Family, m)})
	}
	b.chains[chain] = true
	if b.use(chain, tierSlot) {
		ip := b.cfg.Family.IP()
		rule := []any{"dnat", ip, "to", ip, "daddr . meta l4proto . th dport map", "@" + m}
		if nodePort {
			rule = []any{"dnat", ip, "to meta l4proto . th dport map", "@" + m}
		}
		b.addShared(chain, tierSlot, rule)
	}
	return m
}

func slotChain(nodePort bool, i int) string {
	if nodePort {
		return sharedName(nodePortSlotChainPrefix, i)
	}
	return sharedName(slotChainPrefix, i)
}

// lbShared makes sure chain kind-n exists: masquerade if kind says so, then
// one of the n slots at random.
func (b *portBuilder) lbShared(kind string, n int) string {
	name := sharedName(kind, n)
	b.chains[name] = true
	if !b.use(name, tierLB) {
		return name
	}
	var rules [][]any
	if kind != clusterLB {
		rules = append(rules, []any{"jump", markMasqChain})
	}
	if n == 1 {
		rules = append(rules, []any{"goto", slotChain(kind == nodePortLB, 0)})
	} else {
		var vmap []string
		for i := range n {
			vmap = append(vmap, strconv.Itoa(i)+" : goto "+slotChain(kind == nodePortLB, i))
		}
		rules = append(rules, []any{"numgen random mod", n, "vmap {", strings.Join(vmap, " , "), "}"})
	}
	b.addShared(name, tierLB, rules...)
	return name
}

// addShared adds shared chain name with rules (use said the table needs
// it).
func (b *portBuilder) addShared(name string, tier int, rules ...[]any) {
	b.tx.Add(&knftables.Chain{Name: name})
	for _, r := range rules {
		b.tx.Add(&knftables.Rule{Chain: name, Rule: knftables.Concat(r...)})
	}
	b.shared[name] = sharedObject{tier: tier, rules: len(rules)}
}

// Prefixes of shared object names besides the maps': slot chains.
const (
	slotChainPrefix         = "slot"
	nodePortSlotChainPrefix = "nodeport-slot"
)

// sharedNames holds the names of the shared objects of the first slots and
// endpoint counts, made once: every Service port records those it uses
// (portObjects.shared), and a name made per port was 10,000 strings per
// slot at 10,000 Services.
var sharedNames = func() map[string][]string {
	out := map[string][]string{}
	for _, prefix := range []string{endpointsMap, nodePortEndpointsMap, slotChainPrefix, nodePortSlotChainPrefix, clusterLB, masqLB, nodePortLB} {
		for i := range 64 {
			out[prefix] = append(out[prefix], prefix+"-"+strconv.Itoa(i))
		}
	}
	return out
}()

// sharedName is the name of shared object prefix-i.
func sharedName(prefix string, i int) string {
	if names := sharedNames[prefix]; i < len(names) {
		return names[i]
	}
	return prefix + "-" + strconv.Itoa(i)
}

// use counts the Service port being built as a user of shared object name
// and says whether the table still needs it added.
func (b *portBuilder) use(name string, tier int) bool {
	b.rec.shared = append(b.rec.shared, name)
	if tier == tierMap {
		b.sets[name] = true
	}
	if _, ok := b.shared[name]; ok {
		return false
	}
	b.shared[name] = sharedObject{tier: tier}
	return true
}

func (b *portBuilder) noteHairpin(e Endpoint) {
	b.hairpin[e.IP] = true
	b.rec.hairpin = append(b.rec.hairpin, e.IP)
}

// lbChain (a chain of the Service port's own) balances over eps at random,
// after the session-affinity shortcuts. It is added once per sync.
//
// The choice is a cascade, not a numgen vmap: rule i takes the packet with
// probability 1/(N-i) ("numgen random mod (N-i) == 0"), which is uniform
// over the N endpoints and needs no anonymous set. Anonymous sets (one per
// vmap rule) cost the kernel ~0.8 ms each to create: 10,000 Services took
// 8.7 s to load with them and 0.67 s without (measured with nft -f).
func (b *portBuilder) lbChain(name string, sp *ServicePort, eps []Endpoint) {
	if b.chains[name] {
		return
	}
	b.chain(name)
	affinity := sp.AffinityTimeout > 0
	for _, e := range eps {
		b.noteHairpin(e)
		if affinity {
			b.endpointChain(sp, e)
			b.rule(name, b.cfg.Family.IP(), "saddr", "@", affinitySet(sp, e), "goto", epChain(sp, e))
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
func (b *portBuilder) endpointChain(sp *ServicePort, e Endpoint) {
	name := epChain(sp, e)
	if b.chains[name] {
		return
	}
	b.chain(name)
	set := affinitySet(sp, e)
	if !b.sets[set] {
		b.sets[set] = true
		b.rec.sets = append(b.rec.sets, set)
		secs := int(sp.AffinityTimeout.Seconds())
		b.tx.Add(&knftables.Set{Name: set, Type: b.cfg.Family.AddrType(), Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(sp.AffinityTimeout), Comment: knftables.PtrTo(fmt.Sprintf("clients of %s (%ds affinity)", e, secs))})
	}
	b.rule(name, "update", "@", set, "{", b.cfg.Family.IP(), "saddr }")
	b.rule(name, "meta l4proto", sp.Protocol(), "dnat to", e.String())
}

// hairpinElements fills the set of (endpoint . endpoint) pairs: a DNATed
// packet whose source and destination are the same endpoint is a pod
// reaching itself through a Service, and is masqueraded so that the reply
// comes back through this node.
func (b *builder) hairpinElements() {
	for ip := range b.hairpin {
		b.add(hairpinSet, &knftables.Element{Set: hairpinSet, Key: []string{ip.String(), ip.String()}})
	}
}
