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
// The ruleset is written as knftables objects (kube-proxy's library) with
// rules in nft syntax, into an nft.Tx; package nft commits each sync as
// one netlink batch, compiling the rules to kernel expressions as nft
// would (checked against nft in its tests), so flatnetd needs no nft
// binary. Before, syncs ran `nft -f -`: nft parsed and evaluated a
// 10,000-Service full sync for 0.33 s of CPU before the kernel saw it,
// and re-read the table before every partial sync (bench/proxy: full sync
// 1.25-1.45 s, one change p50 3-4 ms once element-only changes went over
// netlink, 16-50 ms before that).

// Every sync is one nftables transaction, so the kernel goes from one
// consistent ruleset to the next, and a failed one leaves the table as the
// last successful sync wrote it: the proxier keeps its record of what is
// programmed and retries (with backoff, see package runner) as a full sync.
// The first sync (and one after any failure, and one an hour) rewrites the
// whole table; the others rewrite only the Service ports whose Service or
// endpoints changed. Nothing is flushed on exit. After a sync, conntrack
// entries that would now send packets the wrong way are deleted in one pass
// over the table (see staleFlows): UDP flows of removed endpoints and of
// Services gone or going from 0 to N endpoints, and TCP flows to a Service
// port that just got endpoints but were never NATed (a SYN sent before the
// rules existed). The first sync of a process (flatnetd restarted) knows
// nothing of what the last one programmed, so it judges the conntrack table
// itself: only UDP flows to a Service port that are not answered by one of
// its usable endpoints are deleted (see reconcileFlows); live flows keep
// their backends across a restart. It also reads back the UDP frontends
// the table held (readback.go), so that flows to a Service deleted while
// no proxy ran are cleared too.
//
// Self-healing: when idle, each sync (every CheckInterval) verifies over
// netlink that the table still has every chain, set and map the proxier
// made and that the fixed chains hold their rules (see verify.go); if
// anything is missing (`nft flush ruleset`, another tool deleting the
// table) the table is rewritten at once. Map elements changed behind the
// proxy's back are repaired by the hourly full sync.
//
// Conflicting Services (two claiming one externalIP and port, an externalIP
// that is another Service's ClusterIP) are settled by ownership.go's rule:
// the loser's conflicting frontends are not programmed and it gets a
// Warning Event; no Service can make a sync fail for the others.
package proxy

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/runner"
)

// Config is how the proxy sees its node.
type Config struct {
	Family        Family // the zero value is IPv4
	NodeName      string
	NodeZone      string // topology.kubernetes.io/zone of this node at start, for hints (SetZone changes it)
	ClusterCIDR   netip.Prefix
	MasqueradeAll bool
	// Events, when set, receives a Warning Event for each Service that
	// loses an address to another (see ownership.go).
	Events EventRecorder
	// ReleaseMemory returns the memory a full sync needed to the OS once
	// it is done (see Sync).
	ReleaseMemory bool
}

// EventRecorder is the part of client-go's record.EventRecorder the proxy
// uses.
type EventRecorder interface {
	Eventf(object runtime.Object, eventtype, reason, messageFmt string, args ...any)
}

// Proxier holds the latest Services and EndpointSlices and programs them.
type Proxier struct {
	cfg     Config
	nft     nft.Tables
	log     *slog.Logger
	metrics *Metrics
	ct      Conntrack
	health  *healthServer
	runner  *runner.Runner

	mu          sync.Mutex
	services    map[types.NamespacedName]*serviceInfo
	slices      map[types.NamespacedName][]*sliceInfo // per Service
	triggers    map[types.NamespacedName]time.Time    // per EndpointSlice: the oldest change not yet programmed
	dirty       map[types.NamespacedName]bool         // Services to recompute
	zone        string
	zoneChanged bool
	needFull    bool // the last sync failed: rewrite the whole table
	state       map[types.NamespacedName]*serviceState
	eps         map[ServicePortName][]Endpoint // of every Service port in state (see serviceState)
	owners      *ownership
	conflicts   int // frontends not programmed because another Service owns them

	// Written by Sync only (one goroutine): what the last successful sync
	// programmed, per Service port; nil until the first success.
	programmed map[ServicePortName]*portObjects
	lastFull   time.Time
	baseRules  map[string]int             // rules per fixed chain
	previous   []frontend                 // UDP frontends a previous process left in the table (readback.go)
	readBack   bool                       // previous was read
	expected   map[string]map[string]bool // names verify looks for; nil after a sync
	shared     map[string]sharedObject    // the shared chains and maps of balance.go
	refs       *refs                      // users of what ports share, counted over programmed
}

// FullSyncPeriod is how often a sync rewrites the whole table even when the
// diff is small, repairing anything changed behind the proxy's back.
const FullSyncPeriod = time.Hour

// How often the proxier's runner syncs: changes are coalesced for
// MinSyncInterval; when idle it checks the table every CheckInterval; a
// failed sync is retried after 1 s, doubling up to 30 s.
const (
	MinSyncInterval = 50 * time.Millisecond
	CheckInterval   = time.Second
)

// New makes a Proxier over tables (the kernel's, nft.New, or nft.NewFake).
func New(cfg Config, tables nft.Tables, ct Conntrack, log *slog.Logger) *Proxier {
	p := &Proxier{cfg: cfg, nft: tables, ct: ct, log: log, metrics: NewMetrics(cfg.Family),
		services: map[types.NamespacedName]*serviceInfo{}, slices: map[types.NamespacedName][]*sliceInfo{},
		triggers: map[types.NamespacedName]time.Time{}, dirty: map[types.NamespacedName]bool{}, zone: cfg.NodeZone,
		state: map[types.NamespacedName]*serviceState{}, eps: map[ServicePortName][]Endpoint{}, owners: newOwnership(),
		health: newHealthServer(log, cfg.Family)}
	p.runner = runner.New(p.Sync, runner.Options{MinInterval: MinSyncInterval, MaxInterval: CheckInterval,
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second})
	return p
}

// Metrics returns the proxy's metrics.
func (p *Proxier) Metrics() *Metrics { return p.metrics }

// Run syncs (see the package runner) until ctx ends, then stops the
// health-check servers; the ruleset stays.
func (p *Proxier) Run(ctx context.Context) {
	defer p.Close()
	p.runner.Run(ctx)
}

// Status is the sync loop's progress, for health checks.
func (p *Proxier) Status() runner.Status { return p.runner.Status() }

// serviceInfo is what the proxier keeps of a Service: its ports in the
// proxier's family and what Events about it name. The proxier keeps no
// API object: an object holds much the proxy never reads, and the
// proxier's record of it is all flatnetd needs to keep (see the agent).
type serviceInfo struct {
	ports   []*ServicePort
	created time.Time // for address ownership
	uid     types.UID
	version string // resourceVersion
}

// object is the Service as Events about it need it: what client-go's
// recorder puts in the Event's reference.
func (s *serviceInfo) object(key types.NamespacedName) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, UID: s.uid,
		ResourceVersion: s.version, CreationTimestamp: metav1.NewTime(s.created)}}
}

// UpdateService records the latest version of a Service.
func (p *Proxier) UpdateService(svc *corev1.Service) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	info := &serviceInfo{ports: servicePorts(svc, p.cfg.Family), created: svc.CreationTimestamp.Time, uid: svc.UID,
		version: svc.ResourceVersion}
	p.mu.Lock()
	if _, known := p.services[key]; !known && !clusterIPOf(svc, p.cfg.Family).IsValid() {
		p.mu.Unlock()
		return // of the other family (on a dual-stack node): nothing to program here
	}
	p.services[key] = info
	p.dirty[key] = true
	p.mu.Unlock()
	p.runner.Poke()
}

// DeleteService forgets a Service.
func (p *Proxier) DeleteService(svc *corev1.Service) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	p.mu.Lock()
	if _, known := p.services[key]; !known {
		p.mu.Unlock()
		return
	}
	delete(p.services, key)
	p.dirty[key] = true
	p.mu.Unlock()
	p.runner.Poke()
}

// serviceOf is the Service an EndpointSlice belongs to.
func serviceOf(s *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name, ok := s.Labels[discoveryv1.LabelServiceName]
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, ok
}

// UpdateSlice records the latest version of an EndpointSlice.
func (p *Proxier) UpdateSlice(s *discoveryv1.EndpointSlice) {
	key, ok := serviceOf(s)
	if !ok || s.AddressType != addressType(p.cfg.Family) { // the other family's (immutable)
		return
	}
	info := newSliceInfo(s, p.cfg.NodeName)
	p.mu.Lock()
	if i := slices.IndexFunc(p.slices[key], func(o *sliceInfo) bool { return o.name == s.Name }); i >= 0 {
		p.slices[key][i] = info
	} else {
		p.slices[key] = append(p.slices[key], info)
	}
	if t, err := time.Parse(time.RFC3339Nano, s.Annotations[corev1.EndpointsLastChangeTriggerTime]); err == nil {
		id := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		if old, ok := p.triggers[id]; !ok || t.Before(old) {
			p.triggers[id] = t
		}
	}
	p.dirty[key] = true
	p.mu.Unlock()
	p.runner.Poke()
}

// DeleteSlice forgets an EndpointSlice.
func (p *Proxier) DeleteSlice(s *discoveryv1.EndpointSlice) {
	key, ok := serviceOf(s)
	if !ok || s.AddressType != addressType(p.cfg.Family) {
		return
	}
	p.mu.Lock()
	p.slices[key] = slices.DeleteFunc(p.slices[key], func(o *sliceInfo) bool { return o.name == s.Name })
	if len(p.slices[key]) == 0 {
		delete(p.slices, key)
	}
	delete(p.triggers, types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
	p.dirty[key] = true
	p.mu.Unlock()
	p.runner.Poke()
}

// serviceState is one Service turned into ports and endpoints; it is
// recomputed only when the Service or one of its EndpointSlices changes,
// and filtered again when another Service's claims change.
//
// eps, the endpoints of each port by name, is the proxier's one map of
// every Service port's endpoints (Proxier.eps), shared by every
// serviceState: a map per Service cost about 800 bytes, 8 MB at 10,000
// Services. It holds this Service's claimed ports, among the others'.
type serviceState struct {
	claimed   []*ServicePort // as the Service asks
	ports     []*ServicePort // as programmed: without the frontends others own
	eps       map[ServicePortName][]Endpoint
	conflicts []string
}

// snapshot is the desired state at one instant. state is p.state itself,
// not a copy: only snapshot changes it, and only Sync calls snapshot (the
// runner never runs two Syncs at once), so it stays as it is until the
// next Sync.
type snapshot struct {
	state       map[types.NamespacedName]*serviceState
	dirty       map[types.NamespacedName]bool // Services changed since the last snapshot
	triggers    map[types.NamespacedName]time.Time
	zone        string
	zoneChanged bool
	full        bool // the last sync failed
}

// conflictEvent is a Warning Event to send about a Service.
type conflictEvent struct {
	svc       *corev1.Service
	conflicts []string
}

func (p *Proxier) snapshot() (snapshot, []conflictEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := snapshot{state: p.state, dirty: p.dirty, triggers: p.triggers,
		zone: p.zone, zoneChanged: p.zoneChanged, full: p.needFull}
	p.triggers, p.dirty, p.zoneChanged, p.needFull = map[types.NamespacedName]time.Time{}, map[types.NamespacedName]bool{}, false, false
	for _, key := range slices.Collect(maps.Keys(s.dirty)) {
		maps.Copy(s.dirty, p.recompute(key))
	}
	var events []conflictEvent
	for key := range s.dirty {
		if st := p.state[key]; st != nil {
			if ev := p.refilter(st); len(ev) > 0 {
				events = append(events, conflictEvent{svc: p.services[key].object(key), conflicts: ev})
			}
		}
	}
	p.metrics.conflicts.Set(float64(p.conflicts))
	return s, events
}

// recompute turns Service key and its slices into its state, updates the
// address ownership and returns the other Services that may have won or
// lost an address by it.
func (p *Proxier) recompute(key types.NamespacedName) map[types.NamespacedName]bool {
	old := p.state[key]
	var claimed []*ServicePort // as the last recompute found them
	if old != nil {
		claimed = old.claimed
		for _, sp := range old.claimed {
			delete(p.eps, sp.Name)
		}
	}
	svc, ok := p.services[key]
	if !ok {
		if old != nil {
			p.conflicts -= len(old.conflicts)
		}
		delete(p.state, key)
		return p.owners.set(key, time.Time{}, claimed, nil)
	}
	byPort := mergeEndpoints(p.slices[key])
	st := &serviceState{eps: p.eps, claimed: svc.ports}
	if old != nil {
		st.conflicts = old.conflicts
	}
	for _, sp := range st.claimed {
		p.eps[sp.Name] = byPort[portKey{sp.Name.Port, sp.Name.Protocol}]
	}
	p.state[key] = st
	return p.owners.set(key, svc.created, claimed, st.claimed)
}

// refilter applies address ownership to a Service's ports and returns its
// conflicts when they changed (to be reported), nil otherwise.
func (p *Proxier) refilter(st *serviceState) []string {
	ports, conflicts := p.owners.filter(st.claimed)
	changed := !slices.Equal(conflicts, st.conflicts)
	p.conflicts += len(conflicts) - len(st.conflicts)
	st.ports, st.conflicts = ports, conflicts
	if changed {
		return conflicts
	}
	return nil
}

// Sync programs the current state in one transaction. It must not run
// twice at once (Run calls it from one goroutine).
func (p *Proxier) Sync(ctx context.Context) error {
	start := time.Now()
	snap, events := p.snapshot()
	for _, ev := range events {
		p.log.Warn("Service address conflict", "service", ev.svc.Namespace+"/"+ev.svc.Name, "conflicts", ev.conflicts)
		if p.cfg.Events != nil {
			p.cfg.Events.Eventf(ev.svc, corev1.EventTypeWarning, "AddressConflict", "not programmed: %s", strings.Join(ev.conflicts, "; "))
		}
	}
	lastFull := p.lastFull
	err := p.sync(ctx, snap)
	p.metrics.observeSync(time.Since(start), err)
	if err != nil {
		p.requeue(snap)
		return err
	}
	done := time.Now()
	if p.cfg.ReleaseMemory && !p.lastFull.Equal(lastFull) {
		// A full sync builds the whole table as one transaction, garbage
		// once the kernel has it. The runtime would keep that memory
		// resident for a while (its goal for the heap is twice what was
		// live during the sync, and its scavenger returns the rest at its
		// own pace): at 10,000 Services flatnetd's RSS 3 s after start
		// was 86-94 MiB without this and 60 MiB with it, 78-79 MiB either
		// way two minutes later (bench/service -memory). Full syncs are
		// rare (start, failures, hourly); this costs 23-45 ms each.
		debug.FreeOSMemory()
	}
	for _, t := range snap.triggers {
		p.metrics.programmingLatency.Observe(done.Sub(t).Seconds())
	}
	return nil
}

// requeue puts back what a failed sync took, so that the next one (a full
// sync) programs it and reports its latency.
func (p *Proxier) requeue(snap snapshot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.needFull = true
	maps.Copy(p.dirty, snap.dirty)
	for id, t := range snap.triggers {
		if old, ok := p.triggers[id]; !ok || t.Before(old) {
			p.triggers[id] = t
		}
	}
}

// SetZone changes the node's topology zone; when it differs, the next sync
// is a full one, since zone hints may select other endpoints everywhere.
func (p *Proxier) SetZone(zone string) bool {
	p.mu.Lock()
	if p.zone == zone {
		p.mu.Unlock()
		return false
	}
	p.zone = zone
	p.zoneChanged = true
	p.mu.Unlock()
	p.runner.Poke()
	return true
}

// Close stops the health-check servers (the ruleset stays).
func (p *Proxier) Close() { p.health.closeAll() }
