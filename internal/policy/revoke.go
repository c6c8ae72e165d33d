package policy

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// Revocation: the forward chain judges only the first packet of a
// connection (replies and the rest pass as established), so a change that
// denies a flow would leave the connections of that flow open for as long
// as they last. After each commit that takes something away (an allow
// element deleted, a pod newly isolated) the engine deletes the conntrack
// entries of the pods concerned whose flow the new model denies. The next
// packet of such a connection has no entry: conntrack picks it up as a new
// one (mid-stream TCP too, nf_conntrack_tcp_loose), the chain judges it,
// and drops it. A first commit (the agent's start, or after a failure)
// knows nothing of what was allowed before: it checks the flows of every
// isolated pod. Flows that start or end at the node itself are never
// judged by the forward chain and are left alone.

// Flow is a conntrack entry as the forward chain judged its first packet:
// the client, the server it reached (after any DNAT) and the server's
// port.
type Flow struct {
	Proto    uint8 // IPPROTO_TCP, ...
	Src, Dst netip.Addr
	Port     uint16
}

// Allows reports whether m lets the first packet of flow f through this
// node's forward chain.
func (m *Model) Allows(f Flow) bool {
	return m.Egress.allows(f.Src, f.Dst, f) && m.Ingress.allows(f.Dst, f.Src, f)
}

func (d *Direction) allows(pod, peer netip.Addr, f Flow) bool {
	if _, isolated := slices.BinarySearchFunc(d.Isolated, pod, netip.Addr.Compare); !isolated {
		return true
	}
	if d.Any[pod].contains(peer) {
		return true
	}
	var proto Proto
	switch f.Proto {
	case unix.IPPROTO_TCP:
		proto = TCP
	case unix.IPPROTO_UDP:
		proto = UDP
	case unix.IPPROTO_SCTP:
		proto = SCTP
	default:
		return false
	}
	for _, pp := range d.Ports[proto][pod] {
		if pp.Ports.First <= f.Port && f.Port <= pp.Ports.Last && pp.Peers.contains(peer) {
			return true
		}
	}
	return false
}

// Conntrack deletes conntrack entries.
type Conntrack interface {
	// Delete removes, in one pass over the table of family fam, every
	// entry whose flow denied reports, and says how many it removed.
	Delete(fam nft.Family, denied func(Flow) bool) (int, error)
}

// KernelConntrack is the conntrack table of the caller's network
// namespace.
type KernelConntrack struct{}

var _ Conntrack = KernelConntrack{}

// Delete implements Conntrack.
func (KernelConntrack) Delete(fam nft.Family, denied func(Flow) bool) (int, error) {
	f := netlink.InetFamily(unix.AF_INET)
	if fam == nft.IPv6 {
		f = unix.AF_INET6
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, f, flowFilter(denied))
	return int(n), err
}

type flowFilter func(Flow) bool

// MatchConntrackFlow implements netlink.CustomConntrackFilter: the client
// is the original source, the server the reply's source.
func (ff flowFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	src, ok1 := netip.AddrFromSlice(c.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(c.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	return ff(Flow{Proto: c.Forward.Protocol, Src: src.Unmap(), Dst: dst.Unmap(), Port: c.Reverse.SrcPort})
}

// revokedPods are the pods of this node a commit from have to want may
// have taken something from: newly isolated, or an allow element of
// theirs deleted; every isolated pod when have is unknown (nil).
func revokedPods(have, want Elements) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	mark := func(el Element) {
		if a, err := netip.ParseAddr(el.Key[0]); err == nil {
			out[a] = true
		}
	}
	for _, d := range directions {
		for k, el := range want[d.isolated()] {
			if _, ok := have[d.isolated()][k]; !ok {
				mark(el)
			}
		}
		for _, s := range append([]string{d.anySet()}, protoSets(d)...) {
			for k, el := range have[s] {
				if _, ok := want[s][k]; !ok {
					mark(el)
				}
			}
		}
	}
	return out
}

func protoSets(d direction) []string {
	out := make([]string, len(Protos))
	for i, p := range Protos {
		out[i] = d.protoSet(p)
	}
	return out
}

// revoke deletes the conntrack entries that m denies of the pods a commit
// from have to want concerns.
func (e *Engine) revoke(have, want Elements, m *Model) {
	pods := revokedPods(have, want)
	if len(pods) == 0 {
		return
	}
	local, err := e.local()
	if err != nil {
		e.log.Warn("cannot list the node's addresses: established connections not checked", "err", err)
		return
	}
	n, err := e.ct.Delete(e.fam, func(f Flow) bool {
		return (pods[f.Src] || pods[f.Dst]) && !local[f.Src] && !local[f.Dst] && !m.Allows(f)
	})
	if err != nil {
		e.log.Warn("deleting the conntrack entries of denied flows", "err", err, "deleted", n)
	}
	if n > 0 {
		e.log.Info("connections a policy change denies cut", "entries", n, "pods", len(pods))
	}
	e.revoked.Add(uint64(n))
}

// UseConntrack makes the engine cut the established connections a change
// denies (see Revocation above); local lists the node's own addresses.
// Before Run.
func (e *Engine) UseConntrack(ct Conntrack, local func() (map[netip.Addr]bool, error)) {
	e.ct, e.local = ct, local
}
