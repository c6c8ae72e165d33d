package runner

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// harness runs a Runner over a fake clock; fn counts its calls and fails
// while fail is set.
type harness struct {
	t     *testing.T
	clock *clocktesting.FakeClock
	r     *Runner
	calls atomic.Int32
	fail  atomic.Bool
}

var opts = Options{MinInterval: 100 * time.Millisecond, MaxInterval: 10 * time.Second, MinBackoff: time.Second, MaxBackoff: 4 * time.Second}

func start(t *testing.T) *harness {
	h := &harness{t: t, clock: clocktesting.NewFakeClock(time.Unix(1e9, 0))}
	o := opts
	o.Clock = h.clock
	h.r = New(func(context.Context) error {
		h.calls.Add(1)
		if h.fail.Load() {
			return errors.New("refused")
		}
		return nil
	}, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h.waitCalls(1) // the first sync runs at once
	return h
}

// waitCalls waits (in real time) until fn ran n times and the runner
// waits on the clock again.
func (h *harness) waitCalls(n int32) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.calls.Load() < n || !h.clock.HasWaiters() {
		if time.Now().After(deadline) {
			h.t.Fatalf("fn ran %d times, want %d", h.calls.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond) // a wrong extra call would show now
	if got := h.calls.Load(); got != n {
		h.t.Fatalf("fn ran %d times, want %d", got, n)
	}
}

// step advances the fake clock once the runner waits on it.
func (h *harness) step(d time.Duration) {
	h.t.Helper()
	for !h.clock.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	h.clock.Step(d)
}

func TestPokesAreCoalescedWithinMinInterval(t *testing.T) {
	h := start(t)
	h.r.Poke()
	h.waitCalls(1) // the first attempt was 0 s ago in fake time: wait for MinInterval
	h.step(100 * time.Millisecond)
	h.waitCalls(2)
	for range 5 {
		h.r.Poke()
	}
	h.step(50 * time.Millisecond)
	h.waitCalls(2)
	h.step(50 * time.Millisecond)
	h.waitCalls(3)
	if s := h.r.Status(); !s.PendingSince.IsZero() || s.Failures != 0 || s.LastSuccess.IsZero() {
		t.Fatalf("status after a successful sync: %+v", s)
	}
}

func TestRunsEveryMaxIntervalWithoutPokes(t *testing.T) {
	h := start(t)
	h.step(9 * time.Second)
	h.waitCalls(1)
	h.step(time.Second)
	h.waitCalls(2)
	h.step(10 * time.Second)
	h.waitCalls(3)
}

func TestFailuresBackOffAndPokesDoNotCutTheBackoff(t *testing.T) {
	h := start(t)
	h.fail.Store(true)
	h.r.Poke()
	h.step(100 * time.Millisecond)
	h.waitCalls(2) // failed: the next try in 1 s
	h.r.Poke()
	h.step(500 * time.Millisecond)
	h.waitCalls(2)
	h.step(500 * time.Millisecond)
	h.waitCalls(3) // failed again: 2 s
	h.step(time.Second)
	h.waitCalls(3)
	h.step(time.Second)
	h.waitCalls(4) // 4 s, then capped at 4 s
	h.step(4 * time.Second)
	h.waitCalls(5)
	h.step(4 * time.Second)
	h.waitCalls(6)
	s := h.r.Status()
	if s.Failures != 5 || s.LastError == nil || s.PendingSince.IsZero() {
		t.Fatalf("status while failing: %+v", s)
	}
	if err := s.Stalled(h.clock.Now(), 5*time.Second); err == nil {
		t.Fatal("a change waiting 11 s with every sync failing is not reported as stalled")
	}
	h.fail.Store(false)
	h.step(4 * time.Second)
	h.waitCalls(7)
	s = h.r.Status()
	if s.Failures != 0 || !s.PendingSince.IsZero() || s.Stalled(h.clock.Now(), 5*time.Second) != nil {
		t.Fatalf("status after recovery: %+v", s)
	}
	h.r.Poke() // the backoff is over: back to MinInterval
	h.step(100 * time.Millisecond)
	h.waitCalls(8)
}

func TestStalled(t *testing.T) {
	now := time.Unix(1e9, 0)
	for _, c := range []struct {
		name    string
		s       Status
		stalled bool
	}{
		{"never ran", Status{}, false},
		{"idle and recent", Status{LastAttempt: now.Add(-time.Second), LastSuccess: now.Add(-time.Second)}, false},
		{"loop stuck", Status{LastAttempt: now.Add(-time.Minute)}, true},
		{"change waiting, within timeout", Status{LastAttempt: now, PendingSince: now.Add(-5 * time.Second)}, false},
		{"change waiting too long", Status{LastAttempt: now, PendingSince: now.Add(-time.Minute), Failures: 30}, true},
	} {
		if got := c.s.Stalled(now, 10*time.Second) != nil; got != c.stalled {
			t.Errorf("%s: stalled %v, want %v", c.name, got, c.stalled)
		}
	}
}
