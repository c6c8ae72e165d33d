package policy

import (
	"maps"
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

// Elements are the elements of the table's sets: set → key (its fields
// joined by " . ") → the element.
type Elements map[string]map[string]Element

// Element is one element of a set: its fields, and a comment.
type Element struct {
	Key     []string
	Comment string
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
	ip, addr := fam.IP(), fam.AddrType()
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
		pod, peer := ip+" "+d.pod, ip+" "+d.peer
		for _, p := range Protos {
			tx.Add(&knftables.Rule{Chain: d.name, Rule: "meta l4proto " + p.String() + " " + pod + " . " + peer + " . th dport @" + d.protoSet(p) + " return"})
		}
		tx.Add(&knftables.Rule{Chain: d.name, Rule: pod + " . " + peer + " @" + d.anySet() + " return"})
		tx.Add(&knftables.Rule{Chain: d.name, Rule: "counter drop"})
	}
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
		out = append(out, d.isolated(), d.anySet())
		for _, p := range Protos {
			out = append(out, d.protoSet(p))
		}
	}
	return out
}

// writeFull writes the whole table: declarations, rules, and the sets
// flushed and filled with want.
func writeFull(tx *nft.Tx, fam nft.Family, want Elements) {
	writeBase(tx, fam)
	for _, s := range setNames() {
		tx.Flush(&knftables.Set{Name: s})
	}
	writeDiff(tx, nil, want)
}

// writeDiff changes the sets from have to want: every deletion first (the
// kernel refuses an interval that overlaps one still there), then the
// additions. It reports whether it wrote anything.
func writeDiff(tx *nft.Tx, have, want Elements) bool {
	return writeSetsDiff(tx, setNames(), have, want)
}

func writeSetsDiff(tx *nft.Tx, sets []string, have, want Elements) bool {
	wrote := false
	for _, s := range sets {
		for _, k := range slices.Sorted(maps.Keys(have[s])) {
			if w, ok := want[s][k]; !ok || w.Comment != have[s][k].Comment {
				tx.Delete(&knftables.Element{Set: s, Key: have[s][k].Key})
				wrote = true
			}
		}
	}
	for _, s := range sets {
		for _, k := range slices.Sorted(maps.Keys(want[s])) {
			if h, ok := have[s][k]; !ok || h.Comment != want[s][k].Comment {
				el := &knftables.Element{Set: s, Key: want[s][k].Key}
				if c := want[s][k].Comment; c != "" {
					el.Comment = &c
				}
				tx.Add(el)
				wrote = true
			}
		}
	}
	return wrote
}
