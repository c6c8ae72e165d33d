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
// Every sync writes the whole table in one nftables transaction (every chain
// and map flushed and refilled), so the kernel goes from one consistent ruleset to the
// next; stale chains and sets go in the same transaction. Nothing is flushed
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
	"slices"
	"strings"
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

	// what the last successful sync programmed, for conntrack cleanup
	programmed map[ServicePortName]programmedPort
}

type programmedPort struct {
	sp  *ServicePort
	eps []Endpoint
}

// New makes a Proxier over nft (a real knftables interface or a Fake).
func New(cfg Config, nft knftables.Interface, ct Conntrack, log *slog.Logger) *Proxier {
	return &Proxier{cfg: cfg, nft: nft, ct: ct, log: log, metrics: NewMetrics(),
		services: map[types.NamespacedName]*corev1.Service{}, slices: map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice{},
		programmed: map[ServicePortName]programmedPort{}, health: newHealthServer(log)}
}

// Metrics returns the proxy's metrics.
func (p *Proxier) Metrics() *Metrics { return p.metrics }

// UpdateService records the latest version of a Service.
func (p *Proxier) UpdateService(svc *corev1.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.services[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}] = svc
	p.changed = true
}

// DeleteService forgets a Service.
func (p *Proxier) DeleteService(svc *corev1.Service) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.services, types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name})
	p.changed = true
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
	p.changed = true
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
	p.changed = true
}

// snapshot is the desired state at one instant.
type snapshot struct {
	ports    []*ServicePort
	eps      map[ServicePortName][]Endpoint
	triggers []time.Time
}

func (p *Proxier) snapshot() snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := snapshot{eps: map[ServicePortName][]Endpoint{}, triggers: p.triggers}
	p.triggers, p.changed = nil, false
	for key, svc := range p.services {
		var list []*discoveryv1.EndpointSlice
		for _, sl := range p.slices[key] {
			list = append(list, sl)
		}
		byPort := sliceEndpoints(list, p.cfg.NodeName)
		for _, sp := range servicePorts(svc) {
			s.ports = append(s.ports, sp)
			s.eps[sp.Name] = byPort[sp.Name.Port+"/"+string(sp.Name.Protocol)]
		}
	}
	slices.SortFunc(s.ports, func(a, b *ServicePort) int { return strings.Compare(a.Name.String(), b.Name.String()) })
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
		p.changed = true // try again
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
	// their clients. ("flush table" would do the chains in one line, but
	// each chain is named so that the Fake, which treats it differently,
	// sees the same transaction as the kernel.)
	for _, c := range existingChains {
		tx.Flush(&knftables.Chain{Name: c})
	}
	for _, m := range []string{serviceIPsMap, serviceNodePortsMap, noEndpointsMap, noEndpointNodePorts} {
		tx.Flush(&knftables.Map{Name: m})
	}
	tx.Flush(&knftables.Set{Name: clusterIPsSet})
	tx.Flush(&knftables.Set{Name: hairpinSet})
	b.baseRules()
	for _, sp := range snap.ports {
		b.servicePort(sp, snap.eps[sp.Name])
	}
	b.hairpinElements()
	for _, c := range existingChains {
		if !b.chains[c] {
			tx.Delete(&knftables.Chain{Name: c})
		}
	}
	fixedSets := map[string]bool{serviceIPsMap: true, serviceNodePortsMap: true, noEndpointsMap: true, noEndpointNodePorts: true, clusterIPsSet: true, hairpinSet: true}
	for _, s := range existingSets {
		if !b.sets[s] && !fixedSets[s] {
			tx.Delete(&knftables.Set{Name: s})
		}
	}
	if err := p.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nftables transaction (%d rules, %d elements): %w", b.rules, b.elems, err)
	}
	p.metrics.rules.Set(float64(b.rules))
	p.metrics.elements.Set(float64(b.elems))
	p.metrics.chains.Set(float64(len(b.chains)))
	p.afterSync(snap)
	return nil
}

// afterSync clears stale UDP conntrack entries and updates the health-check
// servers, then remembers what is programmed.
func (p *Proxier) afterSync(snap snapshot) {
	now := map[ServicePortName]programmedPort{}
	for _, sp := range snap.ports {
		now[sp.Name] = programmedPort{sp: sp, eps: usable(snap.eps[sp.Name], false, p.cfg.NodeZone, sp.TrafficDistributed)}
	}
	var errs []error
	for name, old := range p.programmed {
		if old.sp.Name.Protocol != corev1.ProtocolUDP {
			continue
		}
		cur, ok := now[name]
		switch {
		case !ok || cur.sp.ClusterIP != old.sp.ClusterIP || cur.sp.Port != old.sp.Port:
			errs = append(errs, p.ct.ClearService(old.sp)) // Service (or port) gone
		default:
			for _, e := range old.eps {
				if !slices.ContainsFunc(cur.eps, func(c Endpoint) bool { return c.IP == e.IP }) {
					errs = append(errs, p.ct.ClearEndpoint(old.sp, e.IP))
				}
			}
			if len(old.eps) == 0 && len(cur.eps) > 0 {
				errs = append(errs, p.ct.ClearService(cur.sp)) // 0 -> N: flows cached while rejected
			}
		}
	}
	for name, cur := range now {
		if _, ok := p.programmed[name]; !ok && cur.sp.Name.Protocol == corev1.ProtocolUDP && len(cur.eps) > 0 {
			errs = append(errs, p.ct.ClearService(cur.sp))
		}
	}
	if err := errors.Join(errs...); err != nil {
		p.log.Warn("clear stale UDP conntrack entries", "err", err)
	}
	p.programmed = now
	p.health.update(snap.ports, snap.eps)
}

// Changed reports whether anything arrived since the last sync.
func (p *Proxier) Changed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Close stops the health-check servers (the ruleset stays).
func (p *Proxier) Close() { p.health.closeAll() }
