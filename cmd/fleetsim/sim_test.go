package main

import (
	"math"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/cache"
)

func TestCAQueueDeadline(t *testing.T) {
	ca := &CA{Capacity: 1000, Deadline: 10} // 1 ms per CSR, 10 ms deadline
	var ok, failed int
	for range 20 {
		done, accepted, _ := ca.submit(0)
		if accepted {
			ok++
			if done > 10 {
				t.Errorf("accepted CSR done at %d ms, after the deadline", done)
			}
		} else {
			failed++
			if done != 10 {
				t.Errorf("rejected CSR fails at %d ms, want at the 10 ms deadline", done)
			}
		}
	}
	if ok != 10 || failed != 10 {
		t.Errorf("burst of 20 at 1000/s with a 10 ms deadline: %d accepted, %d rejected; want 10 and 10", ok, failed)
	}
	ca.Outages = []Outage{{From: 100, To: 200}}
	if ca.Up(150) || !ca.Up(200) || ca.upAgain(150) != 200 {
		t.Error("outage [100,200) not applied")
	}
}

// smallRun runs the 30-minute outage with n agents, a CA scaled down so
// that the fleet loads it as 100,000 agents load a 500/s CA.
func smallRun(t *testing.T, p Policy, n int) (*Sim, Scenario) {
	t.Helper()
	capacity := 500 * float64(n) / 100000
	var sc Scenario
	for _, s := range scenarios(capacity, 24*time.Hour) {
		if s.Name == "outage-30m" {
			sc = s
		}
	}
	s := NewSim(p, &CA{Capacity: sc.Capacity, Deadline: 10000, Outages: sc.Outages}, n, 24*time.Hour, 25*time.Hour, 42)
	s.Window = sc.Window
	s.Run()
	return s, sc
}

func sum(xs []int32) int64 {
	var n int64
	for _, x := range xs {
		n += int64(x)
	}
	return n
}

func TestConservation(t *testing.T) {
	for _, p := range policies() {
		t.Run(p.Name(), func(t *testing.T) {
			s, sc := smallRun(t, p, 2000)
			if s.T.Offered == 0 || s.T.Refused == 0 {
				t.Fatalf("no CSRs offered (%d) or refused (%d): the run did nothing", s.T.Offered, s.T.Refused)
			}
			if got := s.T.Accepted + s.T.Rejected + s.T.InFlight; got != s.T.Offered {
				t.Errorf("offered %d != accepted %d + rejected %d + in flight %d",
					s.T.Offered, s.T.Accepted, s.T.Rejected, s.T.InFlight)
			}
			if sum(s.S.Offered) != s.T.Offered || sum(s.S.Accepted) != s.T.Accepted || sum(s.S.Refused) != s.T.Refused {
				t.Error("per-second series do not add up to the totals")
			}
			perSec := int32(sc.Capacity) + 1
			for i := range s.S.Offered {
				if s.S.Accepted[i] > perSec {
					t.Fatalf("second %d: %d CSRs signed, more than the CA's %v/s", i, s.S.Accepted[i], sc.Capacity)
				}
				if s.S.Expired[i] > s.S.NotReady[i] || s.S.Expired[i] < 0 {
					t.Fatalf("second %d: %d expired but %d not ready", i, s.S.Expired[i], s.S.NotReady[i])
				}
				down := !s.CA.Up(int64(i)*1000) && !s.CA.Up(int64(i)*1000+999)
				if down && s.S.Offered[i] != 0 {
					t.Fatalf("second %d: %d CSRs reached a CA that was down", i, s.S.Offered[i])
				}
			}
			// Same seed, same run.
			again, _ := smallRun(t, p, 2000)
			if again.T != s.T {
				t.Errorf("same seed, different totals: %+v and %+v", s.T, again.T)
			}
		})
	}
}

// TestOutageShorterThanGrace checks our policy's invariants in the
// 30-minute outage: no certificate expires, the fleet is renewed within
// catchUpTarget of the CA's return and never offers it more than 1.2×
// its capacity.
func TestOutageShorterThanGrace(t *testing.T) {
	s, sc := smallRun(t, NewOurs(), 2000)
	r := summarize(sc, s, 0)
	if r.T.ExpiredAgents != 0 || r.MaxNotReady != 0 {
		t.Errorf("%d certificates expired, %d agents not ready at once; want 0", r.T.ExpiredAgents, r.MaxNotReady)
	}
	if r.CatchUp < 0 || r.CatchUp > catchUpTarget {
		t.Errorf("fleet renewed %s after the CA's return, want within %s", r.CatchUp, catchUpTarget)
	}
	if float64(r.PeakAfter) > 1.2*sc.Capacity {
		t.Errorf("offered %d CSR/s after the outage, over 1.2x the capacity %v", r.PeakAfter, sc.Capacity)
	}
}

// longRun runs the 13-hour outage with n agents against a CA scaled as in
// smallRun, answering overload with pushback, until end after the CA's
// return.
func longRun(t *testing.T, p Policy, n int, end time.Duration) (*Sim, Scenario) {
	t.Helper()
	capacity := 500 * float64(n) / 100000
	var sc Scenario
	for _, s := range scenarios(capacity, 24*time.Hour) {
		if s.Name == "outage-long-pushback" {
			sc = s
		}
	}
	ca := &CA{Capacity: sc.Capacity, Deadline: 10000, Outages: sc.Outages, MaxPending: max(1, defaultMaxPending*n/100000)}
	s := NewSim(p, ca, n, 24*time.Hour, time.Duration(sc.Window.To)*time.Millisecond+end, 42)
	s.Window = sc.Window
	s.Run()
	return s, sc
}

// TestPushbackBoundsOfferedLoad checks what our policy offers a CA that
// answers overload with pushback after the 13-hour outage, from the
// moment every agent has tried once (a minute after the CA's return:
// probing agents send within about 2s, the others within RetryMax, 30s)
// to three minutes after it. An agent renewed by then sends nothing more for
// hours. Every other agent has been refused, and waits at least a
// uniform draw under its OverloadWait ceiling C (a pushback only makes
// the wait longer), so on average it sends at most once more plus once
// per C/2. The bound is that, summed over the agents that still have
// their old certificate at the start of the window, with each C computed
// by cache.OverloadWait itself at the end of the window (the smallest it
// gets in it) and for the failures the agent had at its start. The previous
// policy, whose agents retry 30s apart or less (2s once expired) whatever
// the CA says, is over it: the test can tell the two apart.
func TestPushbackBoundsOfferedLoad(t *testing.T) {
	const n = 1000
	from, to := time.Minute, 3*time.Minute
	for _, tt := range []struct {
		p      *Ours
		within bool
	}{{NewOurs(), true}, {NewOursBefore(), false}} {
		t.Run(tt.p.Name(), func(t *testing.T) {
			// The fleet at the start of the window: the same seed plays
			// the same run up to there.
			atStart, sc := longRun(t, tt.p, n, from)
			end := wall(sc.Window.To + to.Milliseconds())
			var bound float64 // CSRs over the window
			window := (to - from).Seconds()
			for i := range atStart.Agents {
				a := &atStart.Agents[i]
				if a.NotBefore >= sc.Window.From {
					continue // renewed since the CA came back: quiet for hours
				}
				ceiling := cache.OverloadWait(end, a.wallNB, a.wallNA, int(a.Failures)+1, tt.p.Retry, math.Nextafter(1, 0))
				bound += 1 + window*2/ceiling.Seconds()
			}
			s, _ := longRun(t, tt.p, n, to)
			var offered int64
			for sec := (sc.Window.To + from.Milliseconds()) / 1000; sec < (sc.Window.To+to.Milliseconds())/1000; sec++ {
				offered += int64(s.S.Offered[sec])
			}
			t.Logf("%s: %d CSRs offered from %s to %s after the CA's return (%.1f/s, capacity %v/s); bound %.0f (%.1f/s)",
				tt.p.Name(), offered, from, to, float64(offered)/window, sc.Capacity, bound, bound/window)
			if within := float64(offered) <= bound; within != tt.within {
				t.Errorf("%s: %d CSRs offered, bound %.0f: within = %v, want %v", tt.p.Name(), offered, bound, within, tt.within)
			}
		})
	}
}
