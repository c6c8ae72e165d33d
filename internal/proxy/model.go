package proxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName identifies one port of one Service.
type ServicePortName struct {
	Service  types.NamespacedName
	Port     string // the port's name ("" for a single unnamed port)
	Protocol corev1.Protocol
}

func (s ServicePortName) String() string {
	out := fmt.Sprintf("%s/%s/%s", s.Service.Namespace, s.Service.Name, strings.ToLower(string(s.Protocol)))
	if s.Port != "" {
		out += "/" + s.Port
	}
	return out
}

// ServicePort is everything the rules need about one Service port.
type ServicePort struct {
	Name               ServicePortName
	ClusterIP          netip.Addr
	Port               uint16
	NodePort           uint16
	ExternalIPs        []netip.Addr // spec.externalIPs and status.loadBalancer ingress IPs
	SourceRanges       []netip.Prefix
	HealthCheckPort    uint16
	AffinityTimeout    time.Duration // 0: no session affinity
	InternalLocal      bool          // internalTrafficPolicy: Local
	ExternalLocal      bool          // externalTrafficPolicy: Local (with NodePort/LB/externalIPs)
	TrafficDistributed bool          // spec.trafficDistribution set: use topology hints
}

// Protocol is the nftables name of the port's protocol.
func (sp *ServicePort) Protocol() string {
	switch sp.Name.Protocol {
	case corev1.ProtocolTCP:
		return "tcp"
	case corev1.ProtocolUDP:
		return "udp"
	}
	return strings.ToLower(string(sp.Name.Protocol))
}

// HasExternal reports whether the port is reachable from outside the cluster.
func (sp *ServicePort) HasExternal() bool { return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 }

// Endpoint is one backend of a Service port.
type Endpoint struct {
	IP          netip.Addr
	Port        uint16
	Ready       bool
	Serving     bool
	Terminating bool
	Local       bool // on this node
	Zones       []string
}

func (e Endpoint) String() string { return netip.AddrPortFrom(e.IP, e.Port).String() }

// servicePorts turns a Service into its ports in family fam: its ClusterIP
// of that family and the external addresses of that family. Headless and
// ExternalName Services, and Services without a ClusterIP of the family,
// have none for the proxy.
func servicePorts(svc *corev1.Service, fam Family) []*ServicePort {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	clusterIP := clusterIPOf(svc, fam)
	if !clusterIP.IsValid() {
		return nil
	}
	external := externalAddrs(svc, fam)
	var ranges []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && !p.Addr().Is4In6() && fam.Has(p.Addr()) {
			ranges = append(ranges, p.Masked())
		}
	}
	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = 10800 * time.Second
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	var out []*ServicePort
	for _, p := range svc.Spec.Ports {
		if p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP && p.Protocol != "" {
			continue // SCTP: no kernel support here
		}
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		sp := &ServicePort{
			Name:            ServicePortName{Service: types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, Port: p.Name, Protocol: proto},
			ClusterIP:       clusterIP,
			Port:            uint16(p.Port),
			ExternalIPs:     external,
			SourceRanges:    ranges,
			AffinityTimeout: affinity,
			InternalLocal:   svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		}
		if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			sp.NodePort = uint16(p.NodePort)
		}
		if sp.HasExternal() && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
			sp.ExternalLocal = true
			sp.HealthCheckPort = uint16(svc.Spec.HealthCheckNodePort)
		}
		sp.TrafficDistributed = svc.Spec.TrafficDistribution != nil
		out = append(out, sp)
	}
	return out
}

// externalAddrs are the Service's externalIPs and load-balancer ingress IPs
// of family fam, each once: an address named twice (in externalIPs and as
// the load balancer's, or twice in one list) is one frontend, programmed
// and removed once.
func externalAddrs(svc *corev1.Service, fam Family) []netip.Addr {
	var external []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		if a, ok := parseAddr(s); ok && fam.Has(a) {
			external = append(external, a)
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if a, ok := parseAddr(ing.IP); ok && fam.Has(a) {
			external = append(external, a)
		}
	}
	slices.SortFunc(external, netip.Addr.Compare)
	return slices.Compact(external)
}

// parseAddr reads an address of a Service or endpoint as nftables will
// take it: an IPv4-mapped IPv6 address is its IPv4 address, and one with a
// zone ("fe80::1%eth0", which the kernel cannot key by) is not an address.
func parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// clusterIPOf is the Service's ClusterIP of family fam (spec.clusterIPs
// holds one per family on a dual-stack Service; clusterIP is its first);
// invalid for a headless Service or one without that family.
func clusterIPOf(svc *corev1.Service, fam Family) netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if a, ok := parseAddr(s); ok && fam.Has(a) { // "None" does not parse
			return a
		}
	}
	return netip.Addr{}
}

// endpoint is what the proxy needs of an EndpointSlice endpoint on port
// (its address is set per address).
func endpoint(e discoveryv1.Endpoint, port uint16, node string) Endpoint {
	ep := Endpoint{
		Port:        port,
		Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		Local:       e.NodeName != nil && *e.NodeName == node,
	}
	ep.Serving = e.Conditions.Serving == nil && ep.Ready || e.Conditions.Serving != nil && *e.Conditions.Serving
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			ep.Zones = append(ep.Zones, z.Name)
		}
	}
	return ep
}

// portKey matches a Service port with the EndpointSlice ports of the
// same name and protocol.
type portKey struct {
	name  string
	proto corev1.Protocol
}

// sliceEndpoints collects the endpoints of every port of a Service from its
// EndpointSlices of family fam, deduplicated by address and port.
func sliceEndpoints(slicesOf []*discoveryv1.EndpointSlice, node string, fam Family) map[portKey][]Endpoint {
	var infos []*sliceInfo
	for _, s := range slicesOf {
		if s.AddressType == addressType(fam) {
			infos = append(infos, newSliceInfo(s, node))
		}
	}
	return mergeEndpoints(infos)
}

// endpointOf identifies an endpoint of a port, to drop repeats.
type endpointOf struct {
	port portKey
	at   netip.AddrPort
}

// sliceInfo is what the proxier keeps of an EndpointSlice: its name and
// the endpoints of each of its ports, deduplicated by address and port and
// sorted.
type sliceInfo struct {
	name  string
	ports []portEndpoints
}

type portEndpoints struct {
	key portKey
	eps []Endpoint
}

// newSliceInfo reads an EndpointSlice as seen from node.
func newSliceInfo(s *discoveryv1.EndpointSlice, node string) *sliceInfo {
	info := &sliceInfo{name: s.Name}
	seen := map[endpointOf]bool{}
	for _, p := range s.Ports {
		if p.Port == nil {
			continue
		}
		key := portKey{"", corev1.ProtocolTCP}
		if p.Name != nil {
			key.name = *p.Name
		}
		if p.Protocol != nil {
			key.proto = *p.Protocol
		}
		i := slices.IndexFunc(info.ports, func(pe portEndpoints) bool { return pe.key == key })
		if i < 0 { // (a key is named once, unless the slice is invalid)
			i = len(info.ports)
			info.ports = append(info.ports, portEndpoints{key: key})
		}
		pe := &info.ports[i]
		for _, e := range s.Endpoints {
			ep := endpoint(e, uint16(*p.Port), node)
			for _, a := range e.Addresses {
				if ip, ok := parseAddr(a); ok && !seen[endpointOf{key, netip.AddrPortFrom(ip, ep.Port)}] {
					seen[endpointOf{key, netip.AddrPortFrom(ip, ep.Port)}] = true
					ep.IP = ip
					pe.eps = append(pe.eps, ep)
				}
			}
		}
	}
	info.ports = slices.DeleteFunc(info.ports, func(pe portEndpoints) bool { return len(pe.eps) == 0 })
	for _, pe := range info.ports {
		slices.SortFunc(pe.eps, compareEndpoints)
	}
	return info
}

func compareEndpoints(a, b Endpoint) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// mergeEndpoints collects the endpoints of each port from the slices of a
// Service, the first of each address and port, sorted. The usual Service,
// with one slice, gets that slice's lists as they are.
func mergeEndpoints(infos []*sliceInfo) map[portKey][]Endpoint {
	out := map[portKey][]Endpoint{}
	if len(infos) == 1 {
		for _, pe := range infos[0].ports {
			out[pe.key] = pe.eps
		}
		return out
	}
	seen := map[endpointOf]bool{}
	for _, info := range infos {
		for _, pe := range info.ports {
			for _, ep := range pe.eps {
				if id := (endpointOf{pe.key, netip.AddrPortFrom(ep.IP, ep.Port)}); !seen[id] {
					seen[id] = true
					out[pe.key] = append(out[pe.key], ep)
				}
			}
		}
	}
	for k := range out {
		slices.SortFunc(out[k], compareEndpoints)
	}
	return out
}

// usable picks the endpoints traffic may go to: the ready ones, or, when
// none is ready, the serving ones that are terminating (upstream's
// terminating-endpoint fallback). local keeps only endpoints on this node.
// With zone hints (trafficDistribution), endpoints hinted for zone are
// preferred when every usable endpoint carries a hint and one matches.
func usable(eps []Endpoint, local bool, zone string, hints bool) []Endpoint {
	pick := func(ok func(Endpoint) bool) []Endpoint {
		var out []Endpoint
		for _, e := range eps {
			if ok(e) && (!local || e.Local) {
				out = append(out, e)
			}
		}
		return out
	}
	out := pick(func(e Endpoint) bool { return e.Ready && !e.Terminating })
	if len(out) == 0 {
		out = pick(func(e Endpoint) bool { return e.Serving && e.Terminating })
	}
	if !hints || zone == "" || local {
		return out
	}
	var inZone []Endpoint
	for _, e := range out {
		if len(e.Zones) == 0 {
			return out // a hint is missing: use all, as upstream does
		}
		if slices.Contains(e.Zones, zone) {
			inZone = append(inZone, e)
		}
	}
	if len(inZone) == 0 {
		return out
	}
	return inZone
}

// hashName makes a short stable prefix for chain names.
func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return strings.ToLower(base32.StdEncoding.EncodeToString(sum[:])[:8])
}

func svcChain(sp *ServicePort) string {
	return "svc-" + hashName(sp.Name.String()) + "-" + sp.Name.String()
}

func localChain(sp *ServicePort) string {
	return "svl-" + hashName(sp.Name.String()) + "-" + sp.Name.String()
}

func extChain(sp *ServicePort) string {
	return "ext-" + hashName(sp.Name.String()) + "-" + sp.Name.String()
}

func epChain(sp *ServicePort, e Endpoint) string {
	id := sp.Name.String() + "__" + e.IP.String() + "/" + strconv.Itoa(int(e.Port))
	return "ep-" + hashName(id) + "-" + id
}

func affinitySet(sp *ServicePort, e Endpoint) string {
	id := sp.Name.String() + "__" + e.IP.String() + "/" + strconv.Itoa(int(e.Port))
	return "aff-" + hashName(id)
}
