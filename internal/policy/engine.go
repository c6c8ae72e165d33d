package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/flatnet-io/flatnet/internal/nft"
	"github.com/flatnet-io/flatnet/internal/runner"
)

// Engine keeps one family's policy table in sync with the cluster its
// Source sees, on a runner of its own (the shape of every engine of
// flatnetd): informer events poke it; each sync computes the whole Model
// and writes the difference from what it last committed as one
// transaction; the first sync, and the one after any failure, rewrites the
// whole table in one transaction (so a restarted agent replaces the
// previous one's table atomically, never opening a window); an idle
// engine checks every CheckInterval that its table is still there.
type Engine struct {
	fam    nft.Family
	node   string
	tables nft.Tables
	src    Source
	log    *slog.Logger
	runner *runner.Runner

	synced   atomic.Bool // a sync has committed the table once
	attach   *Attachments
	restored bool // the attachments in the table have been read back
	commits  commits
	ct       Conntrack // nil: established connections are not revoked
	local    func() (map[netip.Addr]bool, error)
	revoked  atomic.Uint64         // conntrack entries deleted
	model    atomic.Pointer[Model] // of the last sync that succeeded

	mu        sync.Mutex
	committed Elements // nil: the next sync rewrites the whole table
	problems  []string // of the last model, logged when they change
}

// CheckInterval is how often an idle Engine resyncs and checks its table.
const CheckInterval = time.Second

// NewEngine makes the engine of family fam for node; it writes nothing
// until Run (or Sync).
func NewEngine(fam nft.Family, node string, tables nft.Tables, src Source, log *slog.Logger) *Engine {
	e := &Engine{fam: fam, node: node, tables: tables, src: src, log: log, commits: newCommits()}
	e.runner = runner.New(e.Sync, runner.Options{MinInterval: 10 * time.Millisecond, MaxInterval: CheckInterval,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second})
	return e
}

// Poke asks for a sync soon (an informer event).
func (e *Engine) Poke() { e.runner.Poke() }

// Run syncs until ctx ends; the table stays.
func (e *Engine) Run(ctx context.Context) { e.runner.Run(ctx) }

// Status is the sync loop's progress, for health checks.
func (e *Engine) Status() runner.Status { return e.runner.Status() }

// Synced reports whether a sync has committed the table since the engine
// started (its caches synced): a readiness check.
func (e *Engine) Synced() bool { return e.synced.Load() }

// Sync computes the model and commits it: the difference from the last
// commit, or the whole table after a failure or on the first sync. Until
// the Source has synced it writes nothing, so a restarted agent keeps the
// previous one's table.
func (e *Engine) Sync(ctx context.Context) error {
	gen := e.commits.begin()
	err := e.sync(ctx)
	e.commits.end(gen, err)
	if errors.Is(err, ErrNotSynced) {
		return nil
	}
	return err
}

func (e *Engine) sync(ctx context.Context) error {
	c, err := e.src.Cluster()
	if err != nil {
		return err
	}
	var atts []Attachment
	if e.attach != nil {
		if err := e.restore(ctx); err != nil {
			return err
		}
		if err := e.attach.prune(); err != nil {
			e.log.Warn("cannot list the node's links to prune attachments", "err", err)
		}
		atts = e.attach.List()
		c = overlay(c, atts)
	}
	m := Compute(c, e.node, e.fam)
	e.noteProblems(m.Problems)
	want := m.Elements()
	want.addAttachments(e.fam, atts)
	e.mu.Lock()
	have := e.committed
	e.mu.Unlock()
	tx := e.tables.NewTx()
	if have == nil {
		counters, err := e.tables.ListCounters(ctx)
		if err != nil {
			return fmt.Errorf("list the counters of %s (%s): %w", Table, e.fam, err)
		}
		writeFull(tx, e.fam, want, counterNames(counters))
	} else if !writeDiff(tx, have, want) {
		e.model.Store(m)
		return e.check(ctx, want)
	}
	if err := e.tables.Run(ctx, tx); err != nil {
		e.setCommitted(nil)
		return fmt.Errorf("program %s (%s): %w", Table, e.fam, err)
	}
	e.setCommitted(want)
	e.model.Store(m)
	e.synced.Store(true)
	if e.ct != nil {
		e.revoke(have, want, m)
	}
	return nil
}

// Restore reads the attachments a previous agent recorded in the table
// back (once; a sync does it too, before the engine's first commit
// replaces the table): the agent restores before it starts the Guard.
func (e *Engine) Restore(ctx context.Context) error {
	if e.attach == nil {
		return nil
	}
	return e.restore(ctx)
}

func (e *Engine) restore(ctx context.Context) error {
	if e.restored {
		return nil
	}
	els, err := e.tables.ListElements(ctx, "set", attachedSet)
	if err != nil {
		return fmt.Errorf("read the attachments back from %s (%s): %w", Table, e.fam, err)
	}
	for _, el := range els {
		ip, err := netip.ParseAddr(el.Key[len(el.Key)-1])
		if len(el.Key) != 2 || err != nil || el.Comment == nil {
			continue
		}
		e.attach.restore(el.Key[0], ip, types.UID(*el.Comment))
	}
	if len(els) > 0 {
		e.log.Info("attachments read back from the table", "elements", len(els))
	}
	e.restored = true
	return nil
}

// UseAttachments makes the engine overlay this node's attachments on the
// cluster (see Attachments) and keep them in its table; before Run.
func (e *Engine) UseAttachments(a *Attachments) { e.attach = a }

// Commit asks for a sync and waits until one that began after the call
// has committed (or found nothing to change), or ctx ends: an admission
// is in the kernel when it returns nil.
func (e *Engine) Commit(ctx context.Context) error {
	gen := e.commits.ask()
	e.Poke()
	if err := e.commits.wait(ctx, gen); err != nil {
		return fmt.Errorf("policy table %s: %w", e.fam, err)
	}
	return nil
}

// check rewrites the table at once when it is gone (`nft flush ruleset`,
// a distribution's firewall service) though nothing changed.
func (e *Engine) check(ctx context.Context, want Elements) error {
	chains, err := e.tables.List(ctx, "chains")
	if err != nil && !nft.IsNotFound(err) {
		return fmt.Errorf("list %s: %w", Table, err)
	}
	if slices.Contains(chains, forwardChain) {
		return nil
	}
	e.log.Warn("policy table missing; rewriting it", "table", Table)
	tx := e.tables.NewTx()
	writeFull(tx, e.fam, want, nil)
	if err := e.tables.Run(ctx, tx); err != nil {
		e.setCommitted(nil)
		return fmt.Errorf("program %s (%s): %w", Table, e.fam, err)
	}
	return nil
}

func (e *Engine) setCommitted(c Elements) {
	e.mu.Lock()
	e.committed = c
	e.mu.Unlock()
}

func (e *Engine) noteProblems(p []string) {
	e.mu.Lock()
	changed := !slices.Equal(p, e.problems)
	e.problems = p
	e.mu.Unlock()
	if changed && len(p) > 0 {
		e.log.Warn("parts of policies select nothing", "problems", p)
	}
}
