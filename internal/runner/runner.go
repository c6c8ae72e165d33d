// Package runner calls one sync function of an engine (the service proxy,
// the node agent) at a bounded frequency, as kube-proxy's
// BoundedFrequencyRunner does:
//
//   - Poke asks for a sync; pokes that arrive within MinInterval of the last
//     attempt are coalesced into one sync at the end of that interval;
//   - with no poke, the function runs every MaxInterval anyway (a periodic
//     check or resync);
//   - a failed sync is retried after a backoff that doubles from
//     MinBackoff up to MaxBackoff, and pokes do not cut the backoff short,
//     so an object that makes every sync fail cannot make the engine spin;
//   - Status says whether the loop makes progress: when it last tried,
//     when it last succeeded, and since when a poked change has waited for
//     a successful sync. Health endpoints are built on it.
//
// State is nothing but memory: the runner holds no queue that grows while
// syncs fail (pokes are one bit, the oldest pending time one timestamp).
// The clock is injected so tests step time instead of sleeping.
package runner

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Options bound how often the function runs.
type Options struct {
	MinInterval time.Duration // at least this long between two attempts
	MaxInterval time.Duration // at most this long without an attempt
	MinBackoff  time.Duration // first retry after a failure
	MaxBackoff  time.Duration // retries never wait longer than this
	Clock       clock.Clock   // nil: the real clock
}

// Status is what the runner knows about its progress.
type Status struct {
	LastAttempt time.Time // zero: never tried
	LastSuccess time.Time // zero: never succeeded
	// PendingSince is when the oldest poke not yet followed by a successful
	// sync arrived; zero when nothing waits.
	PendingSince time.Time
	Failures     int   // consecutive failed attempts
	LastError    error // of the last attempt, nil after a success
}

// Runner runs fn at a bounded frequency; see the package doc.
type Runner struct {
	fn    func(context.Context) error
	o     Options
	clock clock.Clock
	poke  chan struct{}

	mu     sync.Mutex
	status Status
}

// New makes a runner of fn; it does nothing until Run.
func New(fn func(context.Context) error, o Options) *Runner {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = o.MinInterval
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	return &Runner{fn: fn, o: o, clock: o.Clock, poke: make(chan struct{}, 1)}
}

// Poke asks for a sync soon. It never blocks.
func (r *Runner) Poke() {
	r.mu.Lock()
	if r.status.PendingSince.IsZero() {
		r.status.PendingSince = r.clock.Now()
	}
	r.mu.Unlock()
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// Status returns a copy of the runner's progress.
func (r *Runner) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Stalled says why the runner is not making progress, or nil: a poked
// change has waited longer than timeout for a successful sync, or no
// attempt was made for longer than timeout (the loop is stuck). timeout
// should exceed MaxInterval and MaxBackoff.
func (s Status) Stalled(now time.Time, timeout time.Duration) error {
	if !s.PendingSince.IsZero() && now.Sub(s.PendingSince) > timeout {
		return fmt.Errorf("a change has waited %s for a successful sync (%d failed attempts, last: %v)",
			now.Sub(s.PendingSince).Round(time.Second), s.Failures, s.LastError)
	}
	if !s.LastAttempt.IsZero() && now.Sub(s.LastAttempt) > timeout {
		return fmt.Errorf("no sync attempted for %s", now.Sub(s.LastAttempt).Round(time.Second))
	}
	return nil
}

// Run calls fn at once and then as the options say, until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	for {
		wait := r.attempt(ctx)
		if !r.sleep(ctx, wait) {
			return
		}
	}
}

// attempt runs fn once and returns how long to wait before the next
// attempt when nothing pokes.
func (r *Runner) attempt(ctx context.Context) time.Duration {
	select { // this attempt answers every poke so far
	case <-r.poke:
	default:
	}
	r.mu.Lock()
	pending := r.status.PendingSince
	r.status.PendingSince = time.Time{}
	r.status.LastAttempt = r.clock.Now()
	r.mu.Unlock()

	err := r.fn(ctx)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.LastError = err
	if err == nil {
		r.status.Failures = 0
		r.status.LastSuccess = r.clock.Now()
		return r.o.MaxInterval
	}
	r.status.Failures++
	if !pending.IsZero() && (r.status.PendingSince.IsZero() || pending.Before(r.status.PendingSince)) {
		r.status.PendingSince = pending // still not synced
	}
	return r.backoff(r.status.Failures)
}

func (r *Runner) backoff(failures int) time.Duration {
	d := r.o.MinBackoff
	for i := 1; i < failures && d < r.o.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, r.o.MaxBackoff)
}

// sleep waits until the next attempt is due: after wait, or at a poke once
// MinInterval (or, after a failure, the whole backoff) has passed. It
// returns false when ctx ended.
func (r *Runner) sleep(ctx context.Context, wait time.Duration) bool {
	timer := r.clock.NewTimer(wait)
	defer timer.Stop()
	r.mu.Lock()
	failing := r.status.Failures > 0
	earliest := r.status.LastAttempt.Add(r.o.MinInterval)
	r.mu.Unlock()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C():
		return true
	case <-r.poke:
	}
	if failing { // a poke does not shorten a backoff
		select {
		case <-ctx.Done():
			return false
		case <-timer.C():
			return true
		}
	}
	if d := earliest.Sub(r.clock.Now()); d > 0 {
		coalesce := r.clock.NewTimer(d)
		defer coalesce.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-coalesce.C():
		}
	}
	return true
}
