package proxy

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A Conntrack deletes conntrack entries that would keep sending packets to
// a place they can no longer (or should not) go. Entries are named by their
// original direction, as a client sent them.
type Conntrack interface {
	// Delete removes every entry that one of flows matches, in one pass
	// over the table.
	Delete(flows []Flow) error
}

// Flow names conntrack entries to delete.
type Flow struct {
	Protocol uint8      // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	Dst      netip.Addr // original destination; the zero Addr matches any (a NodePort)
	Port     uint16     // original destination port
	// ReplySrc, when valid, keeps only entries answered by this address
	// (an endpoint).
	ReplySrc netip.Addr
	// NotNATed keeps only entries whose packets were never DNATed: a client
	// reached the address before the Service had rules or endpoints, and the
	// entry would keep its later packets (a retransmitted SYN, the next UDP
	// datagram from the same port) away from the rules now in place.
	NotNATed bool
	// Except, sorted, keeps the entries answered by one of these addresses
	// (the usable endpoints).
	Except []netip.Addr
}

func (f Flow) String() string {
	proto := map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[f.Protocol]
	dst := "*"
	if f.Dst.IsValid() {
		dst = f.Dst.String()
	}
	s := fmt.Sprintf("%s %s:%d", proto, dst, f.Port)
	if f.ReplySrc.IsValid() {
		s += " answered by " + f.ReplySrc.String()
	}
	if f.NotNATed {
		s += " not NATed"
	}
	if len(f.Except) > 0 {
		s += fmt.Sprintf(" unless answered by %v", f.Except)
	}
	return s
}

type flowKey struct {
	proto uint8
	dst   netip.Addr
	port  uint16
}

// flowIndex matches conntrack entries against many Flows at the cost of two
// map lookups per entry.
type flowIndex map[flowKey][]Flow

func newFlowIndex(flows []Flow) flowIndex {
	idx := flowIndex{}
	for _, f := range flows {
		k := flowKey{f.Protocol, f.Dst, f.Port}
		idx[k] = append(idx[k], f)
	}
	return idx
}

func (idx flowIndex) match(proto uint8, dst netip.Addr, port uint16, replySrc netip.Addr) bool {
	for _, d := range []netip.Addr{dst, {}} {
		for _, f := range idx[flowKey{proto, d, port}] {
			if f.ReplySrc.IsValid() && f.ReplySrc != replySrc {
				continue
			}
			if f.NotNATed && replySrc != dst {
				continue
			}
			if _, found := slices.BinarySearchFunc(f.Except, replySrc, netip.Addr.Compare); found {
				continue
			}
			return true
		}
	}
	return false
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (idx flowIndex) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	dst, ok1 := netip.AddrFromSlice(c.Forward.DstIP)
	reply, ok2 := netip.AddrFromSlice(c.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	return idx.match(c.Forward.Protocol, dst.Unmap(), c.Forward.DstPort, reply.Unmap())
}

// KernelConntrack works on the conntrack table of the caller's network
// namespace, for one address family.
type KernelConntrack struct{ Family Family }

var _ Conntrack = KernelConntrack{}

// Delete implements Conntrack: one dump of the family's table, entries
// matched in memory and deleted one by one.
func (k KernelConntrack) Delete(flows []Flow) error {
	if len(flows) == 0 {
		return nil
	}
	fam := netlink.InetFamily(unix.AF_INET)
	if k.Family == IPv6 {
		fam = unix.AF_INET6
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, newFlowIndex(flows))
	return err
}

// staleFlows lists the conntrack entries a sync from old to cur leaves
// pointing the wrong way:
//   - UDP flows to a Service port that is gone, and UDP flows answered by an
//     endpoint that is no longer used (UDP has no handshake: an entry
//     would keep a client's datagrams going to the old place until it
//     idles out);
//   - for a Service port that is new or goes from no usable endpoint to
//     some: every UDP flow (they were rejected or sent nowhere), and TCP
//     flows that were never NATed (a SYN sent before the rules existed: its
//     retransmission would match that entry and be rejected as a packet to
//     an unknown port instead of reaching an endpoint).
func staleFlows(old, cur map[ServicePortName]*portObjects, zone string) []Flow {
	var out []Flow
	usableOf := func(o *portObjects) []Endpoint { return usable(o.eps, false, zone, o.sp.TrafficDistributed) }
	for name, was := range old {
		now := cur[name]
		switch {
		case was.sp.Name.Protocol != corev1.ProtocolUDP:
		case now == nil || now.sp.ClusterIP != was.sp.ClusterIP || now.sp.Port != was.sp.Port:
			out = append(out, portFlows(was.sp, netip.Addr{}, false)...) // Service (or port) gone
		case now != was:
			curEps := usableOf(now)
			for _, e := range usableOf(was) {
				if !slices.ContainsFunc(curEps, func(c Endpoint) bool { return c.IP == e.IP }) {
					out = append(out, portFlows(was.sp, e.IP, false)...)
				}
			}
		}
	}
	for name, now := range cur {
		was := old[name]
		if was == now { // not rebuilt by this sync: nothing changed for it
			continue
		}
		if len(usableOf(now)) == 0 || was != nil && was.sp.ClusterIP == now.sp.ClusterIP && len(usableOf(was)) > 0 {
			continue
		}
		out = append(out, portFlows(now.sp, netip.Addr{}, now.sp.Name.Protocol != corev1.ProtocolUDP)...)
	}
	return out
}

// reconcileFlows is staleFlows for a proxier that has no record of what
// was programmed before it (flatnetd restarted): it names the entries that
// are wrong whatever that was. For each Service port with usable
// endpoints: UDP entries not answered by one of them (an endpoint gone
// meanwhile, or never NATed), and TCP entries never NATed. Entries answered
// by a usable endpoint are left alone, so live flows keep their backends.
func reconcileFlows(cur map[ServicePortName]*portObjects, zone string) []Flow {
	var out []Flow
	for _, o := range cur {
		eps := usable(o.eps, false, zone, o.sp.TrafficDistributed)
		if len(eps) == 0 {
			continue
		}
		if o.sp.Name.Protocol != corev1.ProtocolUDP {
			out = append(out, portFlows(o.sp, netip.Addr{}, true)...)
			continue
		}
		var ips []netip.Addr
		for _, e := range eps {
			ips = append(ips, e.IP)
		}
		slices.SortFunc(ips, netip.Addr.Compare)
		for _, f := range portFlows(o.sp, netip.Addr{}, false) {
			f.Except = slices.Compact(ips)
			out = append(out, f)
		}
	}
	return out
}

// portFlows names the flows to every address of a Service port: its
// ClusterIP, external and load-balancer IPs, and its NodePort.
func portFlows(sp *ServicePort, replySrc netip.Addr, notNATed bool) []Flow {
	proto := uint8(unix.IPPROTO_TCP)
	if sp.Name.Protocol == corev1.ProtocolUDP {
		proto = unix.IPPROTO_UDP
	}
	out := []Flow{{Protocol: proto, Dst: sp.ClusterIP, Port: sp.Port, ReplySrc: replySrc, NotNATed: notNATed}}
	for _, ip := range sp.ExternalIPs {
		out = append(out, Flow{Protocol: proto, Dst: ip, Port: sp.Port, ReplySrc: replySrc, NotNATed: notNATed})
	}
	if sp.NodePort != 0 {
		out = append(out, Flow{Protocol: proto, Port: sp.NodePort, ReplySrc: replySrc, NotNATed: notNATed})
	}
	return out
}
