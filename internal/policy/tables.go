package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// Table is the nftables table of this package, one per family.
const Table = "flatnet-policy"

// The chains of the table.
const (
	forwardChain = "forward"
	ingressChain = "ingress"
	egressChain  = "egress"
)

// direction names a direction's chain and sets, and how its sets are
// keyed: the pod of this node first, then the peer.
type direction struct {
	name      string // "ingress" or "egress": the chain, and the sets' prefix
	pod, peer string // "daddr", "saddr"
}

var directions = []direction{{egressChain, "saddr", "daddr"}, {ingressChain, "daddr", "saddr"}}

func (d direction) isolated() string        { return d.name + "-isolated" }
func (d direction) anySet() string          { return d.name + "-any" }
func (d direction) protoSet(p Proto) string { return d.name + "-" + p.String() }
func (d direction) logSet() string          { return d.name + "-log" }

// Verdict counting: per isolated pod and direction, a named counter of
// the first packets that reach the direction's chain ("new") and one of
// those it drops ("denied"), found by maps keyed by the pod's address.
const (
	newCounts    = "new"
	deniedCounts = "denied"
)

func (d direction) counterMap(kind string) string { return d.name + "-" + kind }

// counterName is the named counter of a pod's verdicts of a kind in
// direction d ("ingress-denied-10.244.1.5"; an IPv6 address's colons are
// dashes).
func counterName(d direction, kind string, ip netip.Addr) string {
	return d.name + "-" + kind + "-" + strings.ReplaceAll(ip.String(), ":", "-")
}

// LogGroup is the nfnetlink_log group denied connections are logged to,
// at most LogRate a second per direction (rate-limited in the kernel).
const (
	LogGroup = 17998
	LogRate  = 20
)

// Elements are the elements of the table's sets: set → key (its fields
// joined by " . ") → the element.
type Elements map[string]map[string]Element

// Element is one element of a set: its fields, and a comment; an
// element of a map of named counters has the counter's name as Value.
type Element struct {
	Key     []string
	Value   []string
	Comment string
}

func (e Elements) addCounter(m, name, key string) {
	if e[m] == nil {
		e[m] = map[string]Element{}
	}
	e[m][key] = Element{Key: []string{key}, Value: []string{name}}
}

// counters are the names of the named counters e's maps refer to.
func (e Elements) counters() map[string]bool {
	out := map[string]bool{}
	for _, els := range e {
		for _, el := range els {
			if len(el.Value) > 0 {
				out[el.Value[0]] = true
			}
		}
	}
	return out
}

func (e Elements) add(set string, key ...string) { e.addWithComment(set, "", key...) }

func (e Elements) addWithComment(set, comment string, key ...string) {
	if e[set] == nil {
		e[set] = map[string]Element{}
	}
	e[set][strings.Join(key, " . ")] = Element{Key: key, Comment: comment}
}

// attachedSet records this node's attachments: host veth . address, the
// pod's UID in the comment (see Attachments).
const attachedSet = "attachments"

// addAttachments adds the elements of the attachments' addresses of
// family fam.
func (e Elements) addAttachments(fam nft.Family, atts []Attachment) {
	for _, a := range atts {
		for _, ip := range a.IPs {
			if fam.Has(ip) {
				e.addWithComment(attachedSet, string(a.UID), a.HostVeth, ip.String())
			}
		}
	}
}

// Elements are the set elements that enforce m.
func (m *Model) Elements() Elements {
	e := Elements{}
	for _, d := range directions {
		dir := &m.Ingress
		if d.name == egressChain {
			dir = &m.Egress
		}
		for _, ip := range dir.Isolated {
			e.add(d.isolated(), ip.String())
			for _, kind := range []string{newCounts, deniedCounts} {
				e.addCounter(d.counterMap(kind), counterName(d, kind, ip), ip.String())
			}
		}
		for _, ip := range dir.Logged {
			e.add(d.logSet(), ip.String())
		}
		for ip, peers := range dir.Any {
			for _, r := range peers {
				e.add(d.anySet(), ip.String(), r.String())
			}
		}
		for proto, byPod := range dir.Ports {
			for ip, pps := range byPod {
				for _, pp := range pps {
					for _, r := range pp.Peers {
						e.add(d.protoSet(proto), ip.String(), r.String(), pp.Ports.String())
					}
				}
			}
		}
	}
	return e
}

// writeBase declares the table, its sets and chains, and writes the
// chains' rules anew (flushed first: the transaction replaces them).
func writeBase(tx *nft.Tx, fam nft.Family) {
	addr := fam.AddrType()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("flatnet: NetworkPolicy (" + fam.String() + ")")})
	interval := []knftables.SetFlag{knftables.IntervalFlag}
	for _, d := range directions {
		tx.Add(&knftables.Set{Name: d.isolated(), Type: addr, Comment: knftables.PtrTo("pods of this node isolated for " + d.name)})
		tx.Add(&knftables.Set{Name: d.anySet(), Type: addr + " . " + addr, Flags: interval,
			Comment: knftables.PtrTo("pod . peers: every protocol and port")})
		for _, p := range Protos {
			tx.Add(&knftables.Set{Name: d.protoSet(p), Type: addr + " . " + addr + " . inet_service", Flags: interval,
				Comment: knftables.PtrTo("pod . peers . ports, " + p.String())})
		}
	}
	for _, d := range directions {
		for _, kind := range []string{newCounts, deniedCounts} {
			tx.Add(&knftables.Map{Name: d.counterMap(kind), Type: addr + " : counter",
				Comment: knftables.PtrTo("isolated pod: its counter of first packets " + kind + " (" + d.name + ")")})
		}
		tx.Add(&knftables.Set{Name: d.logSet(), Type: addr, Comment: knftables.PtrTo("isolated pods whose denied connections are logged")})
	}
	tx.Add(&knftables.Set{Name: attachedSet, Type: "ifname . " + addr,
		Comment: knftables.PtrTo("host veth . address of this node's pods (comment: pod UID), read back on restart")})
	tx.Add(&knftables.Chain{Name: forwardChain, Type: knftables.PtrTo(knftables.FilterType),
		Hook: knftables.PtrTo(knftables.ForwardHook), Priority: knftables.PtrTo(knftables.FilterPriority)})
	tx.Add(&knftables.Chain{Name: ingressChain})
	tx.Add(&knftables.Chain{Name: egressChain})
	for _, c := range []string{forwardChain, ingressChain, egressChain} {
		tx.Flush(&knftables.Chain{Name: c})
	}
	for _, r := range forwardRules(fam) {
		tx.Add(&knftables.Rule{Chain: forwardChain, Rule: r})
	}
	for _, d := range directions {
		for _, r := range directionRules(fam, d) {
			tx.Add(&knftables.Rule{Chain: d.name, Rule: r})
		}
	}
}

// directionRules: the first packet of a connection of an isolated pod is
// counted; it passes when an allow set holds it; otherwise it is logged
// (the pod's namespace asking, rate-limited), counted as denied, and
// dropped (by the last rule, should the pod have no counter).
func directionRules(fam nft.Family, d direction) []string {
	pod, peer := fam.IP()+" "+d.pod, fam.IP()+" "+d.peer
	rules := []string{"counter name " + pod + " map @" + d.counterMap(newCounts)}
	for _, p := range Protos {
		rules = append(rules, "meta l4proto "+p.String()+" "+pod+" . "+peer+" . th dport @"+d.protoSet(p)+" return")
	}
	return append(rules, pod+" . "+peer+" @"+d.anySet()+" return",
		fmt.Sprintf("%s @%s limit rate %d/second log prefix \"flatnet:%s\" group %d", pod, d.logSet(), LogRate, d.name, LogGroup),
		"counter name "+pod+" map @"+d.counterMap(deniedCounts)+" drop",
		"counter drop")
}

// forwardRules: replies and related packets of allowed connections pass;
// over IPv6, neighbour discovery between pods on the bridge (which
// conntrack leaves untracked) passes; then a packet from an
// egress-isolated pod must be allowed by the egress chain, and one to an
// ingress-isolated pod by the ingress chain.
func forwardRules(fam nft.Family) []string {
	ip := fam.IP()
	rules := []string{"ct state established,related accept"}
	if fam == nft.IPv6 {
		rules = append(rules, "icmpv6 type nd-neighbor-solicit accept", "icmpv6 type nd-neighbor-advert accept")
	}
	for _, d := range directions {
		rules = append(rules, ip+" "+d.pod+" @"+d.isolated()+" jump "+d.name)
	}
	return rules
}

// setNames are the names of the table's sets, in a fixed order.
func setNames() []string {
	out := []string{attachedSet}
	for _, d := range directions {
		out = append(out, d.isolated(), d.anySet(), d.logSet())
		for _, p := range Protos {
			out = append(out, d.protoSet(p))
		}
	}
	return out
}

// writeFull writes the whole table: declarations, rules, the sets
// flushed and filled with want; of the named counters the table has
// (existing), those want does not name are deleted, the others keep
// their counts.
func writeFull(tx *nft.Tx, fam nft.Family, want Elements, existing []string) {
	writeBase(tx, fam)
	for _, s := range setNames() {
		tx.Flush(&knftables.Set{Name: s})
	}
	for _, m := range counterMaps() {
		tx.Flush(&knftables.Map{Name: m})
	}
	keep := want.counters()
	for _, c := range existing {
		if !keep[c] {
			tx.Delete(&knftables.Counter{Name: c})
		}
	}
	writeDiff(tx, nil, want)
}

// writeDiff changes the sets from have to want: every deletion first (the
// kernel refuses an interval that overlaps one still there), then the
// additions. It reports whether it wrote anything.
func writeDiff(tx *nft.Tx, have, want Elements) bool {
	return writeSetsDiff(tx, append(setNames(), counterMaps()...), have, want)
}

// counterMaps are the names of the table's maps of counters.
func counterMaps() []string {
	var out []string
	for _, d := range directions {
		out = append(out, d.counterMap(newCounts), d.counterMap(deniedCounts))
	}
	return out
}

func writeSetsDiff(tx *nft.Tx, sets []string, have, want Elements) bool {
	wrote := false
	for _, s := range sets {
		for _, k := range slices.Sorted(maps.Keys(have[s])) {
			if w, ok := want[s][k]; !ok || !sameElement(w, have[s][k]) {
				tx.Delete(element(s, have[s][k]))
				wrote = true
			}
		}
	}
	// counters after the map elements that name them leave, before those
	// that name them come
	hc, wc := have.counters(), want.counters()
	for _, c := range slices.Sorted(maps.Keys(hc)) {
		if !wc[c] {
			tx.Delete(&knftables.Counter{Name: c})
		}
	}
	for _, c := range slices.Sorted(maps.Keys(wc)) {
		if !hc[c] {
			tx.Add(&knftables.Counter{Name: c})
		}
	}
	for _, s := range sets {
		for _, k := range slices.Sorted(maps.Keys(want[s])) {
			if h, ok := have[s][k]; !ok || !sameElement(h, want[s][k]) {
				tx.Add(element(s, want[s][k]))
				wrote = true
			}
		}
	}
	return wrote
}

func sameElement(a, b Element) bool { return a.Comment == b.Comment && slices.Equal(a.Value, b.Value) }

// element is e of set (or map) s.
func element(s string, e Element) *knftables.Element {
	el := &knftables.Element{Set: s, Key: e.Key}
	if len(e.Value) > 0 {
		el.Set, el.Map, el.Value = "", s, e.Value
	}
	if e.Comment != "" {
		el.Comment = &e.Comment
	}
	return el
}

func counterNames(cs []*knftables.Counter) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}
