// Package proxy is flatnet's service proxy: it programs nftables so that a
// packet to a Service (ClusterIP, NodePort, externalIP, load-balancer IP) is
// DNATed to one of its ready endpoints, picked at random, as kube-proxy does.
//
// Design notes (kernel state): one table, "ip flatnet-proxy", owned by the
// proxy and nothing else. Base chains at the NAT and filter hooks only
// dispatch into verdict maps keyed by "address . protocol . port" (and
// "protocol . port" for NodePorts), so the per-packet cost stays constant as
// Services grow. Each Service port has a chain that picks an endpoint at
// random with a cascade of `numgen random mod k == 0 dnat to ...` rules (no
// anonymous sets: see lbChain); with session affinity the picks go through
// per-endpoint chains that record the client in a dynamic set with the
// affinity timeout. Packets
// to a Service without usable endpoints are rejected (ICMP) or, for a Local
// traffic policy without local endpoints, dropped; packets to an unknown port
// of a ClusterIP are rejected; conntrack-INVALID packets are dropped.
// Masquerade is a mark set where needed (traffic from outside the cluster
// CIDR, external traffic with policy Cluster) and applied at postrouting,
// where hairpin traffic (a DNATed packet from an endpoint to itself, matched
// in one set of endpoint pairs) is marked too.
//
// Every sync is one nftables transaction, so the kernel goes from one
// consistent ruleset to the next. The first sync (and one after any failure,
// and one an hour) rewrites the whole table; the others rewrite only the
// Service ports whose Service or endpoints changed. Nothing is flushed
// on exit. After a sync, conntrack entries of UDP flows that would now
// blackhole (removed endpoints, Services gone or going from 0 to N
// endpoints) are deleted.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/knftables"
)

// Config is how the proxy sees its node.
type Config struct {
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

	mu       sync.Mutex
	services map[types.NamespacedName]*corev1.Service
	slices   map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice
	triggers []time.Time // EndpointSlice trigger times since the last sync
	changed  bool
	dirty    map[types.NamespacedName]bool // Services to recompute
	state    map[types.NamespacedName]*serviceState

	// what the last successful sync programmed, per Service port; nil
	// forces the next sync to be a full one
	programmed map[ServicePortName]*portObjects
	lastFull   time.Time
	baseRules  int
}

// FullSyncPeriod is how often a sync rewrites the whole table even when the
// diff is small, repairing anything changed behind the proxy's back.
const FullSyncPeriod = time.Hour

// New makes a Proxier over nft (a real knftables interface or a Fake).
func New(cfg Config, nft knftables.Interface, ct Conntrack, log *slog.Logger) *Proxier {
	return &Proxier{cfg: cfg, nft: nft, ct: ct, log: log, metrics: NewMetrics(),
		services: map[types.NamespacedName]*corev1.Service{}, slices: map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice{},
		dirty: map[types.NamespacedName]bool{}, state: map[types.NamespacedName]*serviceState{},
		health: newHealthServer(log)}
}

// Metrics returns the proxy's metrics.
func (p *Proxier) Metrics() *Metrics { return p.metrics }

// UpdateService records the latest version of a Service.
func (p *Proxier) UpdateService(svc *corev1.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	p.services[key] = svc
	p.dirty[key], p.changed = true, true
}

// DeleteService forgets a Service.
func (p *Proxier) DeleteService(svc *corev1.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	delete(p.services, key)
	p.dirty[key], p.changed = true, true
}

// UpdateSlice records the latest version of an EndpointSlice.
func (p *Proxier) UpdateSlice(s *discoveryv1.EndpointSlice) {
	name, ok := s.Labels[discoveryv1.LabelServiceName]
	if !ok {
		return
	}
	key := types.NamespacedName{Namespace: s.Namespace, Name: name}
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
	name, ok := s.Labels[discoveryv1.LabelServiceName]
	if !ok {
		return
	}
	key := types.NamespacedName{Namespace: s.Namespace, Name: name}
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
	ports    []*ServicePort
	eps      map[ServicePortName][]Endpoint
	dirty    map[types.NamespacedName]bool // Services changed since the last snapshot
	triggers []time.Time
}

func (p *Proxier) snapshot() snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := snapshot{eps: make(map[ServicePortName][]Endpoint, len(p.state)), dirty: p.dirty, triggers: p.triggers}
	p.triggers, p.changed, p.dirty = nil, false, map[types.NamespacedName]bool{}
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
		byPort := sliceEndpoints(list, p.cfg.NodeName)
		st := &serviceState{eps: map[ServicePortName][]Endpoint{}}
		for _, sp := range servicePorts(svc) {
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

func (p *Proxier) sync(ctx context.Context, snap snapshot) error {
	var err error
	if p.programmed == nil || time.Since(p.lastFull) > FullSyncPeriod {
		start := time.Now()
		err = p.fullSync(ctx, snap)
		p.metrics.observeKind("full")
		if err == nil {
			p.metrics.lastFullSync.Set(time.Since(start).Seconds())
		}
	} else {
		err = p.partialSync(ctx, snap)
		p.metrics.observeKind("partial")
	}
	if err != nil {
		p.programmed = nil // the next sync starts from scratch
	}
	return err
}

// fullSync rewrites the whole table: every chain and map flushed and
// refilled, stale chains and sets deleted, in one transaction.
func (p *Proxier) fullSync(ctx context.Context, snap snapshot) error {
	existingChains, err := p.nft.List(ctx, "chains")
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("list chains: %w", err)
	}
	existingSets, err := p.nft.List(ctx, "sets")
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("list sets: %w", err)
	}
	tx := p.nft.NewTransaction()
	b := newBuilder(tx, &p.cfg)
	b.base()
	// Empty every chain that exists and the fixed maps; affinity sets keep
	// their clients. ("flush table" would do the chains in one line, but the
	// Fake treats it differently from the kernel.)
	for _, c := range existingChains {
		tx.Flush(&knftables.Chain{Name: c})
	}
	for _, m := range []string{serviceIPsMap, serviceNodePortsMap, noEndpointsMap, noEndpointNodePorts} {
		tx.Flush(&knftables.Map{Name: m})
	}
	tx.Flush(&knftables.Set{Name: clusterIPsSet})
	tx.Flush(&knftables.Set{Name: hairpinSet})
	b.baseRules()
	programmed := make(map[ServicePortName]*portObjects, len(snap.ports))
	for _, sp := range snap.ports {
		programmed[sp.Name] = b.servicePort(sp, snap.eps[sp.Name])
	}
	b.hairpinElements()
	for _, c := range existingChains {
		if !b.chains[c] {
			tx.Delete(&knftables.Chain{Name: c})
		}
	}
	for _, s := range existingSets {
		if !b.sets[s] && !fixedSets[s] {
			tx.Delete(&knftables.Set{Name: s})
		}
	}
	if err := p.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nftables transaction (%d rules, %d elements): %w", b.rules, b.elems, err)
	}
	p.baseRules = b.rules
	for _, o := range programmed {
		p.baseRules -= o.rules
	}
	p.afterSync(snap, programmed)
	p.lastFull = time.Now()
	return nil
}

var fixedSets = map[string]bool{serviceIPsMap: true, serviceNodePortsMap: true, noEndpointsMap: true,
	noEndpointNodePorts: true, clusterIPsSet: true, hairpinSet: true}

// partialSync rewrites only the Service ports of changed Services whose
// Service or endpoints differ from what is programmed: their chains are flushed and refilled,
// their map elements replaced, and what they no longer need deleted. The
// rest of the table is not touched, so the transaction's size follows the
// change, not the number of Services.
func (p *Proxier) partialSync(ctx context.Context, snap snapshot) error {
	current := map[ServicePortName]*ServicePort{}
	var changed []*ServicePort
	for _, sp := range snap.ports {
		if !snap.dirty[sp.Name.Service] {
			continue
		}
		current[sp.Name] = sp
		old := p.programmed[sp.Name]
		if old == nil || !reflect.DeepEqual(old.sp, sp) || !reflect.DeepEqual(old.eps, snap.eps[sp.Name]) {
			changed = append(changed, sp)
		}
	}
	var removed []ServicePortName
	for name := range p.programmed {
		if snap.dirty[name.Service] && current[name] == nil {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		p.health.update(snap.ports, snap.eps)
		return nil
	}
	tx := p.nft.NewTransaction()
	b := newBuilder(tx, &p.cfg)
	stale := map[ServicePortName]*portObjects{}
	for _, sp := range changed {
		if old := p.programmed[sp.Name]; old != nil {
			stale[sp.Name] = old
		}
	}
	for _, name := range removed {
		stale[name] = p.programmed[name]
	}
	for _, old := range stale {
		for _, c := range old.chains {
			tx.Flush(&knftables.Chain{Name: c})
		}
		for _, e := range old.elements {
			tx.Delete(&knftables.Element{Map: e.m, Key: e.key})
		}
	}
	programmed := make(map[ServicePortName]*portObjects, len(snap.ports))
	for name, objs := range p.programmed {
		programmed[name] = objs
	}
	for _, name := range removed {
		delete(programmed, name)
	}
	for _, sp := range changed {
		programmed[sp.Name] = b.servicePort(sp, snap.eps[sp.Name])
	}
	b.hairpinElements()
	for name, old := range stale {
		now := programmed[name]
		for _, c := range old.chains {
			if now == nil || !slices.Contains(now.chains, c) {
				tx.Delete(&knftables.Chain{Name: c})
			}
		}
		for _, s := range old.sets {
			if now == nil || !slices.Contains(now.sets, s) {
				tx.Delete(&knftables.Set{Name: s})
			}
		}
	}
	deleteUnused(tx, stale, programmed)
	if err := p.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nftables transaction (partial, %d Service ports): %w", len(changed)+len(removed), err)
	}
	p.afterSync(snap, programmed)
	return nil
}

// deleteUnused removes the ClusterIPs and hairpin pairs that only stale
// ports used.
func deleteUnused(tx *knftables.Transaction, stale, programmed map[ServicePortName]*portObjects) {
	vips, pairs := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, objs := range programmed {
		vips[objs.sp.ClusterIP] = true
		for _, ip := range objs.hairpin {
			pairs[ip] = true
		}
	}
	gone := map[string]bool{}
	for _, old := range stale {
		if !vips[old.sp.ClusterIP] && !gone["vip"+old.sp.ClusterIP.String()] {
			gone["vip"+old.sp.ClusterIP.String()] = true
			tx.Delete(&knftables.Element{Set: clusterIPsSet, Key: []string{old.sp.ClusterIP.String()}})
		}
		for _, ip := range old.hairpin {
			if !pairs[ip] && !gone["hp"+ip.String()] {
				gone["hp"+ip.String()] = true
				tx.Delete(&knftables.Element{Set: hairpinSet, Key: []string{ip.String(), ip.String()}})
			}
		}
	}
}

// afterSync clears stale UDP conntrack entries and updates the health-check
// servers, then remembers what is programmed.
func (p *Proxier) afterSync(snap snapshot, programmed map[ServicePortName]*portObjects) {
	var errs []error
	usableOf := func(o *portObjects) []Endpoint { return usable(o.eps, false, p.cfg.NodeZone, o.sp.TrafficDistributed) }
	for name, old := range p.programmed {
		if old.sp.Name.Protocol != corev1.ProtocolUDP {
			continue
		}
		cur := programmed[name]
		switch {
		case cur == nil || cur.sp.ClusterIP != old.sp.ClusterIP || cur.sp.Port != old.sp.Port:
			errs = append(errs, p.ct.ClearService(old.sp)) // Service (or port) gone
		case cur != old:
			oldEps, curEps := usableOf(old), usableOf(cur)
			for _, e := range oldEps {
				if !slices.ContainsFunc(curEps, func(c Endpoint) bool { return c.IP == e.IP }) {
					errs = append(errs, p.ct.ClearEndpoint(old.sp, e.IP))
				}
			}
			if len(oldEps) == 0 && len(curEps) > 0 {
				errs = append(errs, p.ct.ClearService(cur.sp)) // 0 -> N: flows cached while rejected
			}
		}
	}
	for name, cur := range programmed {
		if p.programmed[name] == nil && cur.sp.Name.Protocol == corev1.ProtocolUDP && len(usableOf(cur)) > 0 {
			errs = append(errs, p.ct.ClearService(cur.sp))
		}
	}
	if err := errors.Join(errs...); err != nil {
		p.log.Warn("clear stale UDP conntrack entries", "err", err)
	}
	p.programmed = programmed
	p.health.update(snap.ports, snap.eps)
	rules, elems, chains := p.baseRules, 0, 0
	for _, o := range programmed {
		rules, elems, chains = rules+o.rules, elems+len(o.elements), chains+len(o.chains)
	}
	p.metrics.rules.Set(float64(rules))
	p.metrics.elements.Set(float64(elems))
	p.metrics.chains.Set(float64(chains))
}

// Changed reports whether anything arrived since the last sync.
func (p *Proxier) Changed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Close stops the health-check servers (the ruleset stays).
func (p *Proxier) Close() { p.health.closeAll() }
