package policy

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/runner"
)

// Anti-spoofing: a pod that sends with another's address would be judged
// as that other pod (its egress grants, its peers' ingress grants), and
// could take over another's address on the bridge with ARP. The Guard
// keeps a table on the bridge's own prerouting hook, where the port a
// frame enters by (the pod's host veth) is known and cannot be forged:
//
//	table bridge flatnet-antispoof
//	  set ports: host veths of this node's attachments
//	  set sources-v4, sources-v6: host veth . address
//	  chain prerouting (filter hook prerouting priority -300: before
//	                    br_netfilter hands the frame to the IP hooks)
//	    iifname @ports jump from-pod
//	  chain from-pod
//	    iifname . ip saddr @sources-v4 return
//	    iifname . ip6 saddr @sources-v6 return
//	    ip6 saddr fe80::/10 return       link-local: neighbour discovery
//	    ip6 saddr :: return              duplicate address detection
//	    iifname . arp saddr ip @sources-v4 return
//	    arp saddr ip 0.0.0.0 return      ARP probes
//	    meta protocol ip counter name spoofed-ip drop    (ip6, arp alike)
//
// Frames of other protocols pass. A port not in the record (a pod
// attached before the agent ran, or by a plugin without the policy
// section) is not checked. The record is Attachments, so a pod's port is
// guarded before its ADD returns (the Admitter waits for the Guard's
// commit too). Not checked: the target address of IPv6 neighbour
// advertisements.
const GuardTable = "flatnet-antispoof"

const (
	guardPorts = "ports"
	guardV4    = "sources-v4"
	guardV6    = "sources-v6"
)

var guardSets = []string{guardPorts, guardV4, guardV6}

// SpoofedProtocols are the protocols whose spoofed frames are counted
// (named counters spoofed-ip, spoofed-ip6, spoofed-arp).
var SpoofedProtocols = []string{"ip", "ip6", "arp"}

// Guard keeps the anti-spoofing table in step with this node's
// attachments, on a runner of its own; its first sync, and the one after
// a failure, writes the whole table in one transaction.
type Guard struct {
	tables  nft.Tables
	attach  *Attachments
	log     *slog.Logger
	runner  *runner.Runner
	commits commits

	mu        sync.Mutex
	committed Elements
}

// NewGuard makes the guard of the attachments att.
func NewGuard(tables nft.Tables, att *Attachments, log *slog.Logger) *Guard {
	g := &Guard{tables: tables, attach: att, log: log, commits: newCommits()}
	g.runner = runner.New(g.Sync, runner.Options{MinInterval: 10 * time.Millisecond, MaxInterval: CheckInterval,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second})
	return g
}

// Poke asks for a sync soon.
func (g *Guard) Poke() { g.runner.Poke() }

// Run syncs until ctx ends; the table stays.
func (g *Guard) Run(ctx context.Context) { g.runner.Run(ctx) }

// Status is the sync loop's progress, for health checks.
func (g *Guard) Status() runner.Status { return g.runner.Status() }

// Commit asks for a sync and waits until one that began after the call
// has committed, or ctx ends.
func (g *Guard) Commit(ctx context.Context) error {
	gen := g.commits.ask()
	g.Poke()
	if err := g.commits.wait(ctx, gen); err != nil {
		return fmt.Errorf("anti-spoofing table: %w", err)
	}
	return nil
}

// Sync writes the attachments' ports and addresses.
func (g *Guard) Sync(ctx context.Context) error {
	gen := g.commits.begin()
	err := g.sync(ctx)
	g.commits.end(gen, err)
	return err
}

func (g *Guard) sync(ctx context.Context) error {
	want := guardElements(g.attach.List())
	g.mu.Lock()
	have := g.committed
	g.mu.Unlock()
	tx := g.tables.NewTx()
	switch {
	case have == nil:
		writeGuard(tx)
		for _, s := range guardSets {
			tx.Flush(&knftables.Set{Name: s})
		}
		writeSetsDiff(tx, guardSets, nil, want)
	case !writeSetsDiff(tx, guardSets, have, want):
		chains, err := g.tables.List(ctx, "chains")
		if err != nil && !nft.IsNotFound(err) {
			return fmt.Errorf("list %s: %w", GuardTable, err)
		}
		if slices.Contains(chains, "from-pod") {
			return nil
		}
		g.log.Warn("anti-spoofing table missing; rewriting it", "table", GuardTable)
		g.setCommitted(nil)
		return g.sync(ctx)
	}
	if err := g.tables.Run(ctx, tx); err != nil {
		g.setCommitted(nil)
		return fmt.Errorf("program %s: %w", GuardTable, err)
	}
	g.setCommitted(want)
	return nil
}

func (g *Guard) setCommitted(c Elements) {
	g.mu.Lock()
	g.committed = c
	g.mu.Unlock()
}

func guardElements(atts []Attachment) Elements {
	e := Elements{}
	for _, a := range atts {
		e.add(guardPorts, a.HostVeth)
		for _, ip := range a.IPs {
			set := guardV4
			if ip.Is6() {
				set = guardV6
			}
			e.add(set, a.HostVeth, ip.String())
		}
	}
	return e
}

// writeGuard declares the table and writes its chains anew.
func writeGuard(tx *nft.Tx) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("flatnet: a pod sends with its own addresses only")})
	tx.Add(&knftables.Set{Name: guardPorts, Type: "ifname", Comment: knftables.PtrTo("host veths of this node's pods")})
	tx.Add(&knftables.Set{Name: guardV4, Type: "ifname . ipv4_addr", Comment: knftables.PtrTo("host veth . the pod's address")})
	tx.Add(&knftables.Set{Name: guardV6, Type: "ifname . ipv6_addr", Comment: knftables.PtrTo("host veth . the pod's address")})
	typ, hook, prio := knftables.FilterType, knftables.PreroutingHook, knftables.BaseChainPriority("-300")
	tx.Add(&knftables.Chain{Name: "prerouting", Type: &typ, Hook: &hook, Priority: &prio})
	tx.Add(&knftables.Chain{Name: "from-pod"})
	for _, c := range []string{"prerouting", "from-pod"} {
		tx.Flush(&knftables.Chain{Name: c})
	}
	tx.Add(&knftables.Rule{Chain: "prerouting", Rule: "iifname @" + guardPorts + " jump from-pod"})
	for _, r := range []string{
		"iifname . ip saddr @" + guardV4 + " return",
		"iifname . ip6 saddr @" + guardV6 + " return",
		"ip6 saddr fe80::/10 return",
		"ip6 saddr :: return",
		"iifname . arp saddr ip @" + guardV4 + " return",
		"arp saddr ip 0.0.0.0 return",
	} {
		tx.Add(&knftables.Rule{Chain: "from-pod", Rule: r})
	}
	for _, p := range SpoofedProtocols {
		tx.Add(&knftables.Counter{Name: "spoofed-" + p, Comment: knftables.PtrTo("frames from a pod with another's " + p + " address, dropped")})
		tx.Add(&knftables.Rule{Chain: "from-pod", Rule: "meta protocol " + p + " counter name spoofed-" + p + " drop"})
	}
}
