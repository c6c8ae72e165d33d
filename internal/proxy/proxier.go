// Package proxy is flatnet's service proxy: it programs nftables so that a
// packet to a Service (ClusterIP, NodePort, externalIP, load-balancer IP) is
// DNATed to one of its ready endpoints, picked at random, as kube-proxy does.
//
// Design notes (kernel state): one table per IP family, "ip flatnet-proxy"
// (and "ip6 flatnet-proxy" on a dual-stack node, programmed by a second
// Proxier with Config.Family IPv6; see Family), owned by the proxy and
// nothing else. Base chains at the NAT and filter hooks only
// dispatch into verdict maps keyed by "address . protocol . port" (and
// "protocol . port" for NodePorts), so the per-packet cost stays constant as
// Services grow. A Service address with N endpoints goes to a chain shared
// by every Service with N endpoints, which picks a slot at random and DNATs
// by the slot's map of "address . protocol . port : endpoint" (balance.go),
// so a Service is map elements, not rules. With session affinity, and for
// external traffic with policy Local or source ranges, a Service port has
// chains of its own (a cascade of `numgen random mod k == 0` rules, and
// per-endpoint chains that record the client in a dynamic set with the
// affinity timeout). Packets
// to a Service without usable endpoints are rejected (ICMP) or, for a Local
// traffic policy without local endpoints, dropped; packets to an unknown port
// of a ClusterIP are rejected; conntrack-INVALID packets are dropped.
// Masquerade is a mark set where needed (traffic from outside the cluster
// CIDR, external traffic with policy Cluster) and applied at postrouting,
// where hairpin traffic (a DNATed packet from an endpoint to itself, matched
// in one set of endpoint pairs) is marked too.
//
// The library is sigs.k8s.io/knftables (as kube-proxy's): it renders a
// transaction as nft syntax and runs `nft -f -`, and gives tests a Fake with
// the same API. NewNFTables adapts it: element additions merged into one
// command per set, and names listed over netlink. Measured with
// `go run ./bench/proxy -services 10000` (2 endpoints each) on the 2-core
// reference VM: the first full sync takes 1.07-1.13 s, a full sync over the
// table a previous run left 1.00-1.06 s, a sync after one EndpointSlice
// change p50 49-50 ms, p99 78-98 ms.
//
// knftables against google/nftables, measured with bench/nftlib (the same
// ruleset, in the shape this proxy renders, through both libraries, checked
// to list identically; 2 idle cores, nft 1.0.6, `go run ./bench/nftlib
// -services 1000,10000 -shape inline`): a full load of 10,000 Services takes
// 1.25 s with knftables and 1.19 s with google/nftables, which allocates
// 275 MB of Go heap per load against 26 MB (plus 155 MB in the short-lived
// nft process) and needs its netlink socket buffers raised to get past ~100
// Services (it asks for an ack per message and an echo per rule). A
// one-Service update is where they differ: p50 8.3 ms against 44.9 ms, p99
// 14 ms against 64 ms, since knftables starts nft, which re-reads the table
// and parses each time. We keep knftables: the full sync costs the same, a
// partial sync is already well inside the programming-latency target (a
// fifth of kube-proxy's, see the README), the agent's heap stays small, and
// tests get a Fake and rules in the syntax we debug with. A netlink backend
// is the lever left for partial-sync latency (~30 ms at 10,000 Services).
// (That comparison was made with a chain per Service; the ruleset is
// mostly map elements now.)
//
// Every sync is one nftables transaction, so the kernel goes from one
// consistent ruleset to the next. The first sync (and one after any failure,
// and one an hour) rewrites the whole table; the others rewrite only the
// Service ports whose Service or endpoints changed. Nothing is flushed
// on exit. After a sync, conntrack entries that would now send packets the
// wrong way are deleted in one pass over the table (see staleFlows): UDP
// flows of removed endpoints and of Services gone or going from 0 to N
// endpoints, and TCP flows to a Service port that just got endpoints but
// were never NATed (a SYN sent before the rules existed).
package proxy

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/knftables"
)

// Config is how the proxy sees its node.
type Config struct {
	Family        Family // the zero value is IPv4
	NodeName      string
	NodeZone      string // topology.kubernetes.io/zone of this node, for hints
	ClusterCIDR   netip.Prefix
	MasqueradeAll bool
}

// Proxier holds the latest Services and EndpointSlices and programs them.
type Proxier struct {
	cfg     Config
	nft     knftables.Interface
	log     *slog.Logger
	metrics *Metrics
	ct      Conntrack
	health  *healthServer

	mu          sync.Mutex
	services    map[types.NamespacedName]*corev1.Service
	slices      map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice
	triggers    []time.Time // EndpointSlice trigger times since the last sync
	changed     bool
	dirty       map[types.NamespacedName]bool // Services to recompute
	zoneChanged bool
	state       map[types.NamespacedName]*serviceState

	// what the last successful sync programmed, per Service port; nil
	// forces the next sync to be a full one
	programmed map[ServicePortName]*portObjects
	lastFull   time.Time
	baseRules  int                     // rules of the fixed chains
	shared     map[string]sharedObject // the shared chains and maps of balance.go
}

// FullSyncPeriod is how often a sync rewrites the whole table even when the
// diff is small, repairing anything changed behind the proxy's back.
const FullSyncPeriod = time.Hour

// New makes a Proxier over nft (a real knftables interface or a Fake).
func New(cfg Config, nft knftables.Interface, ct Conntrack, log *slog.Logger) *Proxier {
	return &Proxier{cfg: cfg, nft: nft, ct: ct, log: log, metrics: NewMetrics(cfg.Family),
		services: map[types.NamespacedName]*corev1.Service{}, slices: map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice{},
		dirty: map[types.NamespacedName]bool{}, state: map[types.NamespacedName]*serviceState{},
		health: newHealthServer(log, cfg.Family)}
}

// Metrics returns the proxy's metrics.
func (p *Proxier) Metrics() *Metrics { return p.metrics }

// UpdateService records the latest version of a Service.
func (p *Proxier) UpdateService(svc *corev1.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	if _, known := p.services[key]; !known && !clusterIPOf(svc, p.cfg.Family).IsValid() {
		return // of the other family (on a dual-stack node): nothing to program here
	}
	p.services[key] = svc
	p.dirty[key], p.changed = true, true
}

// DeleteService forgets a Service.
func (p *Proxier) DeleteService(svc *corev1.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	if _, known := p.services[key]; !known {
		return
	}
	delete(p.services, key)
	p.dirty[key], p.changed = true, true
}

// serviceOf is the Service an EndpointSlice belongs to.
func serviceOf(s *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name, ok := s.Labels[discoveryv1.LabelServiceName]
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, ok
}

// UpdateSlice records the latest version of an EndpointSlice.
func (p *Proxier) UpdateSlice(s *discoveryv1.EndpointSlice) {
	key, ok := serviceOf(s)
	if !ok || s.AddressType != p.cfg.Family.addressType() { // the other family's (immutable)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.slices[key] == nil {
		p.slices[key] = map[string]*discoveryv1.EndpointSlice{}
	}
	p.slices[key][s.Name] = s
	if t, err := time.Parse(time.RFC3339Nano, s.Annotations[corev1.EndpointsLastChangeTriggerTime]); err == nil {
		p.triggers = append(p.triggers, t)
	}
	p.dirty[key], p.changed = true, true
}

// DeleteSlice forgets an EndpointSlice.
func (p *Proxier) DeleteSlice(s *discoveryv1.EndpointSlice) {
	key, ok := serviceOf(s)
	if !ok || s.AddressType != p.cfg.Family.addressType() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.slices[key], s.Name)
	if len(p.slices[key]) == 0 {
		delete(p.slices, key)
	}
	p.dirty[key], p.changed = true, true
}

// serviceState is one Service turned into ports and endpoints; it is
// recomputed only when the Service or one of its EndpointSlices changes.
type serviceState struct {
	ports []*ServicePort
	eps   map[ServicePortName][]Endpoint
}

// snapshot is the desired state at one instant.
type snapshot struct {
	ports       []*ServicePort
	eps         map[ServicePortName][]Endpoint
	dirty       map[types.NamespacedName]bool // Services changed since the last snapshot
	triggers    []time.Time
	zoneChanged bool
}

func (p *Proxier) snapshot() snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := snapshot{eps: make(map[ServicePortName][]Endpoint, len(p.state)), dirty: p.dirty, triggers: p.triggers, zoneChanged: p.zoneChanged}
	p.triggers, p.changed, p.dirty, p.zoneChanged = nil, false, map[types.NamespacedName]bool{}, false
	for key := range s.dirty {
		svc, ok := p.services[key]
		if !ok {
			delete(p.state, key)
			continue
		}
		var list []*discoveryv1.EndpointSlice
		for _, sl := range p.slices[key] {
			list = append(list, sl)
		}
		byPort := sliceEndpoints(list, p.cfg.NodeName, p.cfg.Family)
		st := &serviceState{eps: map[ServicePortName][]Endpoint{}}
		for _, sp := range servicePorts(svc, p.cfg.Family) {
			st.ports = append(st.ports, sp)
			st.eps[sp.Name] = byPort[sp.Name.Port+"/"+string(sp.Name.Protocol)]
		}
		p.state[key] = st
	}
	for _, st := range p.state {
		s.ports = append(s.ports, st.ports...)
		for name, eps := range st.eps {
			s.eps[name] = eps
		}
	}
	return s
}

// Sync programs the current state in one transaction.
func (p *Proxier) Sync(ctx context.Context) error {
	start := time.Now()
	snap := p.snapshot()
	err := p.sync(ctx, snap)
	p.metrics.observeSync(time.Since(start), err)
	if err != nil {
		p.mu.Lock()
		p.changed = true // try again, with a full sync (programmed was reset)
		p.triggers = append(p.triggers, snap.triggers...)
		p.mu.Unlock()
		return err
	}
	done := time.Now()
	for _, t := range snap.triggers {
		p.metrics.programmingLatency.Observe(done.Sub(t).Seconds())
	}
	return nil
}

// SetZone changes the node's topology zone; when it differs, the next sync
// is a full one, since zone hints may select other endpoints everywhere.
func (p *Proxier) SetZone(zone string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.NodeZone == zone {
		return false
	}
	p.cfg.NodeZone = zone
	p.zoneChanged, p.changed = true, true
	return true
}

// Changed reports whether anything arrived since the last sync.
func (p *Proxier) Changed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Close stops the health-check servers (the ruleset stays).
func (p *Proxier) Close() { p.health.closeAll() }
