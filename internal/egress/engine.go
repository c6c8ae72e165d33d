package egress

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/flatnet-io/flatnet/internal/runner"
)

// Engine keeps one family's egress table in sync with the node addresses
// it is given, on a runner of its own (the shape of every engine of
// flatnetd): a change of the addresses pokes it; otherwise it checks every
// CheckInterval that the table is still in the kernel (Present, over
// netlink) and rewrites it at once when it is not, so `nft flush ruleset`
// costs pod egress a second, not a resync period.
type Engine struct {
	m      *Masquerader
	cidr   netip.Prefix
	log    *slog.Logger
	runner *runner.Runner

	mu      sync.Mutex
	nodeIPs []netip.Addr
	known   bool // SetNodeIPs was called: until then the table is left as it is
	dirty   bool // nodeIPs changed since the last successful sync
}

// CheckInterval is how often an idle Engine checks its table.
const CheckInterval = time.Second

// NewEngine makes the engine of m for cluster CIDR cidr; it writes nothing
// until Run.
func NewEngine(m *Masquerader, cidr netip.Prefix, log *slog.Logger) *Engine {
	e := &Engine{m: m, cidr: cidr, log: log}
	e.runner = runner.New(e.sync, runner.Options{MinInterval: 100 * time.Millisecond, MaxInterval: CheckInterval,
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second})
	return e
}

// SetNodeIPs gives the engine every node's addresses (those of its family
// are used); a change pokes its runner.
func (e *Engine) SetNodeIPs(ips []netip.Addr) {
	ips = slices.Clone(ips)
	slices.SortFunc(ips, netip.Addr.Compare)
	ips = slices.Compact(ips)
	e.mu.Lock()
	changed := !e.known || !slices.Equal(ips, e.nodeIPs)
	if changed {
		e.nodeIPs, e.dirty, e.known = ips, true, true
	}
	e.mu.Unlock()
	if changed {
		e.runner.Poke()
	}
}

// Run syncs until ctx ends; the table stays.
func (e *Engine) Run(ctx context.Context) { e.runner.Run(ctx) }

// Status is the sync loop's progress, for health checks.
func (e *Engine) Status() runner.Status { return e.runner.Status() }

func (e *Engine) sync(ctx context.Context) error {
	e.mu.Lock()
	ips, dirty, known := e.nodeIPs, e.dirty, e.known
	e.mu.Unlock()
	if !known {
		return nil // a restarted agent keeps the table a previous one wrote until it knows the nodes
	}
	if !dirty {
		present, err := e.m.Present(ctx)
		if err != nil || present {
			return err
		}
		e.log.Warn("egress table missing; rewriting it", "table", Table)
	}
	if err := e.m.Sync(ctx, e.cidr, ips); err != nil {
		return err
	}
	e.mu.Lock()
	e.dirty = e.dirty && !slices.Equal(ips, e.nodeIPs) // changed again meanwhile
	e.mu.Unlock()
	return nil
}
