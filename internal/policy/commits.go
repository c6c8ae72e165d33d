package policy

import (
	"context"
	"errors"
	"sync"
)

// commits lets callers wait for a sync that began after they asked: each
// ask takes a generation, each sync notes the generation asked when it
// began, and when it commits every caller of that generation or before
// is answered.
type commits struct {
	mu      sync.Mutex
	asked   uint64
	done    uint64
	lastErr error
	changed chan struct{} // closed and replaced when a sync ends
}

func newCommits() commits { return commits{changed: make(chan struct{})} }

// ask takes a new generation.
func (c *commits) ask() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked++
	return c.asked
}

// begin is the generation a sync starting now serves.
func (c *commits) begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.asked
}

// end records a sync of generation gen: committed when err is nil.
func (c *commits) end(gen uint64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && gen > c.done {
		c.done = gen
	}
	c.lastErr = err
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait returns once generation gen has committed, or ctx's error with the
// last sync's.
func (c *commits) wait(ctx context.Context, gen uint64) error {
	for {
		c.mu.Lock()
		done, last, changed := c.done >= gen, c.lastErr, c.changed
		c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if last != nil {
				return errors.Join(ctx.Err(), last)
			}
			return ctx.Err()
		}
	}
}
