// Package clocktest provides a manually driven clock for tests.
package clocktest

import (
	"sort"
	"sync"
	"time"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// Fake is a clock.Clock whose time only moves when Advance, Set or Jump
// is called. Timers whose deadline is reached fire during that call.
type Fake struct {
	mu  sync.Mutex
	now time.Time
	// skew is what Jump added to the wall clock: Now returns now+skew,
	// while timers, like Go's monotonic ones, count from now.
	skew    time.Duration
	timers  []*fakeTimer
	changed chan struct{} // closed and replaced whenever timers change
}

var _ clock.Clock = (*Fake)(nil)

// New returns a Fake clock set to now.
func New(now time.Time) *Fake {
	return &Fake{now: now, changed: make(chan struct{})}
}

// Now returns the fake wall-clock time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now.Add(f.skew)
}

// NewTimer returns a timer that fires when the fake time reaches now+d.
func (f *Fake) NewTimer(d time.Duration) clock.Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{f: f, at: f.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- f.now.Add(f.skew)
		return t
	}
	f.timers = append(f.timers, t)
	f.notifyLocked()
	return t
}

// Advance moves the time forward by d and fires due timers.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setLocked(f.now.Add(d))
}

// Set moves the time to t (forward or backward) and fires due timers.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setLocked(t.Add(-f.skew))
}

// Jump moves the wall clock by d (forward or backward) without moving
// timers, as when a host's clock is stepped: a timer still fires once its
// duration has passed (Advance), whatever the wall clock says. Now
// returns the stepped time from then on.
func (f *Fake) Jump(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.skew += d
	f.notifyLocked()
}

func (f *Fake) setLocked(t time.Time) {
	f.now = t
	sort.Slice(f.timers, func(i, j int) bool { return f.timers[i].at.Before(f.timers[j].at) })
	kept := f.timers[:0]
	for _, tm := range f.timers {
		if tm.at.After(t) {
			kept = append(kept, tm)
			continue
		}
		tm.c <- t.Add(f.skew)
	}
	f.timers = kept
	f.notifyLocked()
}

// Timers returns how many timers are waiting to fire.
func (f *Fake) Timers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// NextDeadline returns the earliest pending timer deadline, on the wall
// clock, and false if there is none.
func (f *Fake) NextDeadline() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.timers) == 0 {
		return time.Time{}, false
	}
	next := f.timers[0].at
	for _, t := range f.timers[1:] {
		if t.at.Before(next) {
			next = t.at
		}
	}
	return next.Add(f.skew), true
}

// WaitForTimers blocks until at least n timers are pending or the
// deadline passes; it reports whether n timers were reached. Tests use it
// to know that a goroutine is parked on the clock before moving time.
func (f *Fake) WaitForTimers(n int, deadline time.Duration) bool {
	return f.waitTimers(func(pending int) bool { return pending >= n }, deadline)
}

// WaitForNoTimers blocks until no timer is pending or the deadline
// passes; it reports whether none was reached. Tests use it to know that
// a goroutine has stopped every timer it held.
func (f *Fake) WaitForNoTimers(deadline time.Duration) bool {
	return f.waitTimers(func(pending int) bool { return pending == 0 }, deadline)
}

// waitTimers blocks until ok holds for the number of pending timers,
// waking each time the timers change, or the deadline passes.
func (f *Fake) waitTimers(ok func(pending int) bool, deadline time.Duration) bool {
	return f.WaitUntil(func() bool { return ok(f.Timers()) }, deadline)
}

// WaitUntil blocks until cond holds or the deadline passes, and reports
// whether it held. cond is checked at once and again each time a timer is
// set, stopped or fired, so it must only depend on state that the code
// under test changes before it next touches the clock's timers (e.g. a
// status it updates before it sleeps on a timer). cond must not call
// methods of f that change timers.
func (f *Fake) WaitUntil(cond func() bool, deadline time.Duration) bool {
	stop := time.NewTimer(deadline)
	defer stop.Stop()
	for {
		f.mu.Lock()
		changed := f.changed
		f.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-changed:
		case <-stop.C:
			return false
		}
	}
}

func (f *Fake) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

type fakeTimer struct {
	f  *Fake
	at time.Time
	c  chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	for i, tm := range t.f.timers {
		if tm == t {
			t.f.timers = append(t.f.timers[:i], t.f.timers[i+1:]...)
			t.f.notifyLocked()
			return true
		}
	}
	return false
}
