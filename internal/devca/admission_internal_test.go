package devca

import (
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
)

// TestAdmissionSlotsFollowTheSigningRate checks the slots given to refused
// callers: as far apart as one request takes divided by the requests
// handled at once, so that refused callers come back at the signing rate.
func TestAdmissionSlotsFollowTheSigningRate(t *testing.T) {
	clk := clocktest.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	a := newAdmission(2, clk)
	// Teach it a handling time of 1.6s (the mean moves 1/16 of the way).
	leave, _, _ := a.enter()
	clk.Advance(1600 * time.Millisecond)
	leave()
	if a.service != 100*time.Millisecond {
		t.Fatalf("mean handling time %s, want 100ms", a.service)
	}
	l1, _, _ := a.enter()
	l2, _, _ := a.enter()
	for i, want := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond} {
		leave, pushback, pending := a.enter()
		if leave != nil || pending != 2 {
			t.Fatalf("refusal %d: admitted with 2 of 2 in progress", i)
		}
		if pushback != want {
			t.Errorf("refusal %d: pushback %s, want %s", i, pushback, want)
		}
	}
	// Slots in the past are not handed out.
	clk.Advance(time.Second)
	if _, pushback, _ := a.enter(); pushback != 50*time.Millisecond {
		t.Errorf("after the promised slots passed: pushback %s, want 50ms", pushback)
	}
	// No slot is promised beyond the horizon: those refused then are
	// told the horizon, and the slots after the last promised one stay.
	for range 199 { // 200 slots promised: the last at 10s, the horizon
		a.enter()
	}
	for i := range 2 {
		if _, pushback, _ := a.enter(); pushback != slotHorizon {
			t.Errorf("refusal %d past the horizon: pushback %s, want %s", i, pushback, slotHorizon)
		}
	}
	clk.Advance(9900 * time.Millisecond)
	if _, pushback, _ := a.enter(); pushback != 150*time.Millisecond {
		t.Errorf("after 9.9s: pushback %s, want the slot after the last promised (10s+50ms)", pushback)
	}
	l1()
	l2()
	if leave, _, _ := a.enter(); leave == nil {
		t.Error("refused with no request in progress")
	}
}
