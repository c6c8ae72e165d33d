package proxy

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
)

// sync picks a full or a partial sync, or, when nothing changed, checks
// that the table is intact; see the package doc. A failed sync leaves the
// kernel and p.programmed as they were.
func (p *Proxier) sync(ctx context.Context, snap snapshot) error {
	full := snap.full || snap.zoneChanged || p.programmed == nil || time.Since(p.lastFull) > FullSyncPeriod
	if !full && len(snap.dirty) == 0 {
		damage, err := p.verify(ctx)
		if err != nil {
			return fmt.Errorf("check the table: %w", err)
		}
		if damage == "" {
			return nil
		}
		p.log.Warn("the proxy's table was changed behind its back; rewriting it", "damage", damage)
		p.metrics.repairs.Inc()
		// What the kernel did meanwhile is unknown (connections made while
		// the table was gone were not NATed): the rewrite judges the
		// conntrack table as a restart's first sync does.
		p.programmed = nil
		full = true
	}
	if !full {
		return p.partialSync(ctx, snap)
	}
	if !p.readBack {
		var err error
		if p.previous, err = p.tableFrontends(ctx); err != nil {
			p.log.Warn("cannot read back the table; UDP flows of Services deleted meanwhile stay until conntrack forgets them", "err", err)
		}
		p.readBack = true
	}
	start := time.Now()
	p.metrics.observeKind("full")
	if err := p.fullSync(ctx, snap); err != nil {
		return err
	}
	p.metrics.lastFullSync.Set(time.Since(start).Seconds())
	return nil
}

// config is the proxy's configuration with the zone of the snapshot.
func (p *Proxier) config(snap snapshot) *Config {
	cfg := p.cfg
	cfg.NodeZone = snap.zone
	return &cfg
}

// fullSync rewrites the whole table: every chain and map flushed and
// refilled, stale chains and sets deleted, in one transaction.
func (p *Proxier) fullSync(ctx context.Context, snap snapshot) error {
	existing, err := p.listObjects(ctx)
	if err != nil {
		return err
	}
	existingChains, existingSets, existingMaps := existing["chains"], existing["sets"], existing["maps"]
	tx := p.nft.NewTx()
	b := newBuilder(tx, p.config(snap), nil)
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
	for _, m := range existingMaps {
		if !fixedSets[m] { // endpoint maps (balance.go)
			tx.Flush(&knftables.Map{Name: m})
		}
	}
	tx.Flush(&knftables.Set{Name: clusterIPsSet})
	tx.Flush(&knftables.Set{Name: hairpinSet})
	b.baseRules()
	programmed := make(map[ServicePortName]*portObjects, max(len(p.programmed), len(snap.state)))
	for _, st := range snap.state {
		for _, sp := range st.ports {
			programmed[sp.Name] = b.servicePort(sp, st.eps[sp.Name])
		}
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
	for _, m := range existingMaps {
		if !b.sets[m] && !fixedSets[m] {
			tx.Delete(&knftables.Map{Name: m})
		}
	}
	b.addElements()
	if err := p.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nftables transaction (%d rules, %d elements): %w", b.rules, b.elems, err)
	}
	p.baseRules = b.fixedRules
	p.shared = b.shared
	p.afterSync(snap, programmed)
	p.lastFull = time.Now()
	return nil
}

// listObjects lists the names of the table's chains, sets and maps (none
// when the table does not exist).
func (p *Proxier) listObjects(ctx context.Context) (map[string][]string, error) {
	out := map[string][]string{}
	for _, kind := range []string{"chains", "sets", "maps"} {
		names, err := p.nft.List(ctx, kind)
		if err != nil && !nft.IsNotFound(err) {
			return nil, fmt.Errorf("list %s: %w", kind, err)
		}
		out[kind] = names
	}
	return out, nil
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
	for key := range snap.dirty {
		st := snap.state[key]
		if st == nil {
			continue
		}
		for _, sp := range st.ports {
			current[sp.Name] = sp
			old := p.programmed[sp.Name]
			if old == nil || !reflect.DeepEqual(old.sp, sp) || !reflect.DeepEqual(old.eps, st.eps[sp.Name]) {
				changed = append(changed, sp)
			}
		}
	}
	var removed []ServicePortName
	for name := range p.programmed {
		if snap.dirty[name.Service] && current[name] == nil {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		p.metrics.observeKind("partial")
		p.health.update(snap.state)
		return nil
	}
	tx := p.nft.NewTx()
	b := newBuilder(tx, p.config(snap), p.shared)
	stale := map[ServicePortName]*portObjects{}
	for _, sp := range changed {
		if old := p.programmed[sp.Name]; old != nil {
			stale[sp.Name] = old
		}
	}
	for _, name := range removed {
		stale[name] = p.programmed[name]
	}
	clearStale(tx, stale)
	updates := make(map[ServicePortName]*portObjects, len(changed))
	for _, sp := range changed {
		updates[sp.Name] = b.servicePort(sp, snap.state[sp.Name.Service].eps[sp.Name])
	}
	b.hairpinElements()
	deleteReplaced(tx, stale, updates)
	counts := p.refs.change(stale, updates)
	counts.deleteUnused(tx, b.shared)
	b.addElements()
	p.metrics.observeKind(partialKind(tx))
	err := p.nft.Run(ctx, tx)
	if err != nil {
		return fmt.Errorf("nftables transaction (partial, %d Service ports): %w", len(changed)+len(removed), err)
	}
	p.shared = b.shared
	p.refs.apply(counts)
	p.afterPartialSync(snap, stale, updates)
	return nil
}

// clearStale empties the chains of the stale ports and deletes their map
// elements, each once (the kernel refuses to delete an element twice).
func clearStale(tx *nft.Tx, stale map[ServicePortName]*portObjects) {
	deleted := map[string]bool{}
	for _, old := range stale {
		for _, c := range old.chains {
			tx.Flush(&knftables.Chain{Name: c})
		}
		for _, e := range old.elements {
			if id := e.m + " " + strings.Join(e.key, " . "); !deleted[id] {
				deleted[id] = true
				tx.Delete(&knftables.Element{Map: e.m, Key: e.key})
			}
		}
	}
}

// deleteReplaced deletes the chains and sets of stale ports that their
// new version (if any) no longer has.
func deleteReplaced(tx *nft.Tx, stale, programmed map[ServicePortName]*portObjects) {
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
}

// afterSync clears stale conntrack entries and updates the health-check
// servers after a full sync, then remembers what is programmed. The first
// sync of a process has no record of what was programmed before it: it
// judges the conntrack table against what it programmed (reconcileFlows)
// instead of treating every Service port as new.
func (p *Proxier) afterSync(snap snapshot, programmed map[ServicePortName]*portObjects) {
	flows := staleFlows(p.programmed, programmed, snap.zone)
	if p.programmed == nil {
		flows = append(reconcileFlows(programmed, snap.zone), goneFlows(p.previous, programmed)...)
		p.previous = nil
	}
	if err := p.ct.Delete(flows); err != nil {
		p.log.Warn("clear stale conntrack entries", "err", err)
	}
	p.programmed = programmed
	p.refs = newRefs(programmed)
	p.health.update(snap.state)
	p.expected = nil // verify lists them again
	p.setSizeMetrics()
}

// afterPartialSync does what afterSync does for the ports a partial sync
// rewrote (stale: as they were; updates: as they are now, none for a
// removed port), in time proportional to them.
func (p *Proxier) afterPartialSync(snap snapshot, stale, updates map[ServicePortName]*portObjects) {
	if err := p.ct.Delete(staleFlows(stale, updates, snap.zone)); err != nil {
		p.log.Warn("clear stale conntrack entries", "err", err)
	}
	health := false
	for name, old := range stale {
		health = health || old.sp.HealthCheckPort != 0
		if updates[name] == nil {
			delete(p.programmed, name)
		}
	}
	for name, now := range updates {
		health = health || now.sp.HealthCheckPort != 0
		p.programmed[name] = now
	}
	if health {
		p.health.update(snap.state)
	}
	p.expected = nil
	p.setSizeMetrics()
}

// setSizeMetrics sets the rules, elements and chains metrics.
func (p *Proxier) setSizeMetrics() {
	rules, elems, chains := p.refs.rules, p.refs.elems, p.refs.chains+len(p.baseRules)
	for _, n := range p.baseRules {
		rules += n
	}
	for _, o := range p.shared {
		rules += o.rules
		if o.tier != tierMap {
			chains++
		}
	}
	p.metrics.rules.Set(float64(rules))
	p.metrics.elements.Set(float64(elems))
	p.metrics.chains.Set(float64(chains))
}

// partialKind names a partial sync for the metric: "elements" when it
// changes only map elements (an endpoint change: a Service is map
// elements), "partial" otherwise.
func partialKind(tx *nft.Tx) string {
	if tx.ElementsOnly() {
		return "elements"
	}
	return "partial"
}
