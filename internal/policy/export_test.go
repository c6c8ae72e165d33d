package policy

import "time"

// SetClock sets the clock of a's pruning (and lets it prune at once).
func SetClock(a *Attachments, now func() time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.now, a.lastPrune = now, time.Time{}
}
