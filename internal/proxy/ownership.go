package proxy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Address ownership: which Service port a frontend (an address, protocol
// and port the kernel keys a Service by) belongs to when more than one
// claims it.
//
// The API server keeps ClusterIPs and NodePorts unique, but externalIPs and
// load-balancer ingress IPs are free text: two Services can name the same
// externalIP and port, and a Service can name another's ClusterIP as its
// externalIP (the externalIPs hijack: traffic meant for the other Service
// would reach its own pods). nftables refuses a second map element with
// the same key, so without a rule one such Service would make every sync
// fail, on every node. The rule, the same on every node:
//
//   - an externalIP or load-balancer IP that is any Service's ClusterIP is
//     never programmed;
//   - otherwise the oldest Service (creationTimestamp, then namespace/name,
//     then port name) owns a frontend, and a younger one's claim on it is
//     not programmed;
//   - a Service port whose ClusterIP frontend another owns is not
//     programmed at all (the API server prevents it; a restored etcd might
//     not).
//
// What a Service loses is reported as a Warning Event on it and in the
// metric flatnet_proxy_conflicting_frontends; nothing else is affected.

// frontend is one key of the Service maps: address, protocol, port; the
// address is the zero Addr for a NodePort (any local address).
type frontend struct {
	addr  netip.Addr
	proto corev1.Protocol
	port  uint16
}

func (f frontend) String() string {
	if !f.addr.IsValid() {
		return fmt.Sprintf("NodePort %s/%d", f.proto, f.port)
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.addr, f.port), f.proto)
}

// claimant is a Service port claiming a frontend. A ClusterIP or NodePort
// claim (allocated uniquely by the API server) comes before any external
// one; among equals the oldest Service wins.
type claimant struct {
	port     *ServicePortName // of the claiming ServicePort
	external bool
	created  time.Time
}

func (c claimant) compare(o claimant) int {
	return cmp.Or(cmp.Compare(b2i(c.external), b2i(o.external)), c.created.Compare(o.created),
		cmp.Compare(c.port.Service.Namespace, o.port.Service.Namespace), cmp.Compare(c.port.Service.Name, o.port.Service.Name),
		cmp.Compare(c.port.Port, o.port.Port), cmp.Compare(c.port.Protocol, o.port.Protocol))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ownership indexes every claim of every Service. The ports each Service
// claims with are its caller's (serviceState.claimed), not kept twice.
type ownership struct {
	claims     map[frontend][]claimant                      // sorted, oldest first
	clusterIPs map[netip.Addr]int                           // Service ports with this ClusterIP
	externals  map[netip.Addr]map[types.NamespacedName]bool // who names an address as external
}

func newOwnership() *ownership {
	return &ownership{claims: map[frontend][]claimant{}, clusterIPs: map[netip.Addr]int{},
		externals: map[netip.Addr]map[types.NamespacedName]bool{}}
}

// frontends lists what a Service port claims: its ClusterIP, each external
// address and its NodePort.
func frontends(sp *ServicePort) (clusterIP frontend, external []frontend, nodePort frontend) {
	clusterIP = frontend{sp.ClusterIP, sp.Name.Protocol, sp.Port}
	for _, ip := range sp.ExternalIPs {
		external = append(external, frontend{ip, sp.Name.Protocol, sp.Port})
	}
	if sp.NodePort != 0 {
		nodePort = frontend{netip.Addr{}, sp.Name.Protocol, sp.NodePort}
	}
	return clusterIP, external, nodePort
}

// claimsOf lists every frontend sp claims, and whether as external.
func claimsOf(sp *ServicePort) map[frontend]bool {
	cip, ext, np := frontends(sp)
	out := map[frontend]bool{}
	for _, f := range ext {
		out[f] = true
	}
	out[cip] = false // a Service's own ClusterIP is never external to it
	if np.port != 0 {
		out[np] = false
	}
	return out
}

// set replaces the claims of Service key, made with the ports old (none
// the first time), by those of ports (none: the Service is gone) and
// returns the other Services whose share of their claims may have changed
// with it.
func (o *ownership) set(key types.NamespacedName, created time.Time, old, ports []*ServicePort) map[types.NamespacedName]bool {
	affected := map[types.NamespacedName]bool{}
	touch := func(f frontend) {
		for _, c := range o.claims[f] {
			affected[c.port.Service] = true
		}
		for svc := range o.externals[f.addr] { // a ClusterIP came or went
			affected[svc] = true
		}
	}
	for _, sp := range old {
		for f := range claimsOf(sp) {
			touch(f)
			o.claims[f] = slices.DeleteFunc(o.claims[f], func(c claimant) bool { return *c.port == sp.Name })
			if len(o.claims[f]) == 0 {
				delete(o.claims, f)
			}
		}
		if o.clusterIPs[sp.ClusterIP]--; o.clusterIPs[sp.ClusterIP] <= 0 {
			delete(o.clusterIPs, sp.ClusterIP)
		}
		for _, ip := range sp.ExternalIPs {
			removeFrom(o.externals, ip, key)
		}
	}
	for _, sp := range ports {
		for f, external := range claimsOf(sp) {
			c := claimant{port: &sp.Name, external: external, created: created}
			i, _ := slices.BinarySearchFunc(o.claims[f], c, claimant.compare)
			o.claims[f] = slices.Insert(o.claims[f], i, c)
			touch(f)
		}
		o.clusterIPs[sp.ClusterIP]++
		for _, ip := range sp.ExternalIPs {
			addTo(o.externals, ip, key)
		}
	}
	delete(affected, key)
	return affected
}

func addTo(m map[netip.Addr]map[types.NamespacedName]bool, a netip.Addr, key types.NamespacedName) {
	if m[a] == nil {
		m[a] = map[types.NamespacedName]bool{}
	}
	m[a][key] = true
}

func removeFrom(m map[netip.Addr]map[types.NamespacedName]bool, a netip.Addr, key types.NamespacedName) {
	delete(m[a], key)
	if len(m[a]) == 0 {
		delete(m, a)
	}
}

// owns reports whether sp is the oldest claimant of f.
func (o *ownership) owns(sp *ServicePort, f frontend) bool {
	c := o.claims[f]
	return len(c) > 0 && *c[0].port == sp.Name
}

// filter returns the ports of a Service as they are programmed: without
// the frontends others own, and the conflicts that cost it. A port that
// loses nothing is returned as it is (ports are never changed once made),
// and the usual Service, which has no conflict, gets its list back: it is
// not held twice.
func (o *ownership) filter(ports []*ServicePort) (out []*ServicePort, conflicts []string) {
	for _, sp := range ports {
		cip, ext, np := frontends(sp)
		if !o.owns(sp, cip) {
			conflicts = append(conflicts, fmt.Sprintf("ClusterIP %s of port %s is also %s's", cip, sp.Name, o.claims[cip][0].port))
			continue
		}
		keep := *sp
		keep.ExternalIPs = nil
		for i, f := range ext {
			switch {
			case o.clusterIPs[f.addr] > 0:
				conflicts = append(conflicts, fmt.Sprintf("external IP %s of port %s is a ClusterIP", f.addr, sp.Name))
			case !o.owns(sp, f):
				conflicts = append(conflicts, fmt.Sprintf("%s of port %s belongs to the older %s", f, sp.Name, o.claims[f][0].port))
			default:
				keep.ExternalIPs = append(keep.ExternalIPs, sp.ExternalIPs[i])
			}
		}
		if np.port != 0 && !o.owns(sp, np) {
			conflicts = append(conflicts, fmt.Sprintf("%s of port %s belongs to the older %s", np, sp.Name, o.claims[np][0].port))
			keep.NodePort = 0
		}
		if len(keep.ExternalIPs) == len(sp.ExternalIPs) && keep.NodePort == sp.NodePort {
			out = append(out, sp) // nothing lost
			continue
		}
		if !keep.HasExternal() {
			keep.ExternalLocal, keep.HealthCheckPort = false, 0
		}
		out = append(out, &keep)
	}
	if len(conflicts) == 0 { // every port as it is: the same list
		return ports, nil
	}
	return out, conflicts
}
