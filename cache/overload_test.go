package cache

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestOverloadWait(t *testing.T) {
	p := RetryPolicy{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	nb, na := t0, t0.Add(24*time.Hour)
	tests := []struct {
		name     string
		now      time.Time
		nb, na   time.Time
		attempt  int
		u        float64
		min, max time.Duration
	}{
		{"first overload: ceiling Initial", t0.Add(13 * time.Hour), nb, na, 1, 0.999, 499 * time.Millisecond, 500 * time.Millisecond},
		{"doubles per overload", t0.Add(13 * time.Hour), nb, na, 4, 0.999, 3995 * time.Millisecond, 4 * time.Second},
		{"11h left: capped at 10 min, not RetryMax", t0.Add(13 * time.Hour), nb, na, 30, 0.999, 599 * time.Second, RetryOverloadMax},
		{"full jitter reaches low", t0.Add(13 * time.Hour), nb, na, 30, 0.01, 6 * time.Second, 6 * time.Second},
		{"100s left: a tenth is 10s", na.Add(-100 * time.Second), nb, na, 30, 0.999, 9990 * time.Millisecond, 10 * time.Second},
		{"last tenth, 1h left: 6 min", na.Add(-time.Hour), nb, na, 30, 0.999, 359 * time.Second, 6 * time.Minute},
		{"5s left: floor 1s", na.Add(-5 * time.Second), nb, na, 30, 0.999, 999 * time.Millisecond, time.Second},
		{"expired: capped at 30s", na.Add(time.Hour), nb, na, 30, 0.999, 29970 * time.Millisecond, RetryOverloadExpiredMax},
		{"expired, first overload: Initial", na.Add(time.Hour), nb, na, 1, 0.999, 499 * time.Millisecond, 500 * time.Millisecond},
		{"no certificate: capped at 30s", t0, time.Time{}, time.Time{}, 30, 0.999, 29970 * time.Millisecond, RetryOverloadExpiredMax},
		{"never a tight loop", na.Add(time.Hour), nb, na, 30, 0, RetryMinWait, RetryMinWait},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := OverloadWait(tt.now, tt.nb, tt.na, tt.attempt, p, tt.u)
			if got < tt.min || got > tt.max {
				t.Fatalf("OverloadWait = %s, want in [%s, %s]", got, tt.min, tt.max)
			}
		})
	}
}

// TestOverloadWaitFitsTimeLeft sweeps a certificate's whole life: while
// valid no wait is over a tenth of what is left (or 1s) nor 10 min, once
// expired none is over 30s, and agents with more time left may wait
// longer than those about to expire.
func TestOverloadWaitFitsTimeLeft(t *testing.T) {
	p := RetryPolicy{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	for _, ttl := range []time.Duration{20 * time.Second, time.Hour, 24 * time.Hour, 90 * 24 * time.Hour} {
		nb := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
		na := nb.Add(ttl)
		for now := nb; now.Before(na.Add(ttl)); now = now.Add(ttl / 997) {
			for attempt := 1; attempt < 40; attempt += 5 {
				for _, u := range []float64{0, 0.3, 0.999999} {
					w := OverloadWait(now, nb, na, attempt, p, u)
					left := na.Sub(now)
					limit := min(max(left/10, RetryFloor), RetryOverloadMax)
					if left <= 0 {
						limit = RetryOverloadExpiredMax
					}
					if w > limit || w < RetryMinWait {
						t.Fatalf("ttl %s, %s left, attempt %d, u %v: wait %s, want in [%s, %s]", ttl, left, attempt, u, w, RetryMinWait, limit)
					}
				}
			}
		}
	}
}

func TestRetryWaitFor(t *testing.T) {
	p := RetryPolicy{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	nb, na := t0, t0.Add(24*time.Hour)
	renew := t0.Add(12 * time.Hour)
	expired := na.Add(time.Hour)
	overloaded := Failure{Overloaded: true}
	pushback := func(d time.Duration) Failure { return Failure{Overloaded: true, Pushback: d} }
	tests := []struct {
		name     string
		now      time.Time
		attempt  int
		f        Failure
		u        float64
		min, max time.Duration
	}{
		{"unreachable, expired: still at most 2s", expired, 30, Failure{}, 0.999, 1998 * time.Millisecond, RetryExpiredMax},
		{"unreachable, past renewal: still at most 30s", renew.Add(time.Hour), 30, Failure{}, 0.999, 29 * time.Second, 30 * time.Second},
		{"overloaded, expired: up to 30s", expired, 30, overloaded, 0.999, 29 * time.Second, RetryOverloadExpiredMax},
		{"overloaded, past renewal: up to 10 min", renew.Add(time.Hour), 30, overloaded, 0.999, 599 * time.Second, RetryOverloadMax},
		{"pushback is a floor when expired", expired, 1, pushback(5 * time.Second), 0, 5 * time.Second, 5 * time.Second},
		{"pushback plus at most a tenth on top", expired, 1, pushback(5 * time.Second), 0.999, 5 * time.Second, 5500 * time.Millisecond},
		{"pushback over a shorter backoff, 5s left", na.Add(-5 * time.Second), 30, pushback(20 * time.Second), 0.5, 21 * time.Second, 21 * time.Second},
		{"a longer backoff wins over a short pushback", renew.Add(time.Hour), 30, pushback(time.Second), 0.999, 599 * time.Second, RetryOverloadMax},
		{"pushback capped at 10 min", expired, 1, Failure{Overloaded: true, Pushback: 24 * time.Hour}, 0, RetryOverloadMax, RetryOverloadMax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RetryWaitFor(tt.now, nb, na, renew, tt.attempt, tt.f, p, tt.u)
			if got < tt.min || got > tt.max {
				t.Fatalf("RetryWaitFor = %s, want in [%s, %s]", got, tt.min, tt.max)
			}
		})
	}
}

// caError is a Signer error as caclient's and cfsslclient's are.
type caError struct {
	overloaded bool
	pushback   time.Duration
}

func (e *caError) Error() string             { return "create certificate: CA refused" }
func (e *caError) Overloaded() bool          { return e.overloaded }
func (e *caError) RetryAfter() time.Duration { return e.pushback }

func TestClassifyFailure(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Failure
	}{
		{"plain error: not overloaded", errors.New("CA at istiod:15012 unreachable"), Failure{}},
		{"unreachable caclient error", &caError{}, Failure{}},
		{"overloaded, wrapped", fmt.Errorf("sign csr: %w", &caError{overloaded: true}), Failure{Overloaded: true}},
		{"pushback makes it overloaded", fmt.Errorf("sign csr: %w", &caError{pushback: 5 * time.Second}), Failure{Overloaded: true, Pushback: 5 * time.Second}},
		{"negative pushback is none", &caError{overloaded: true, pushback: -time.Second}, Failure{Overloaded: true}},
		{"pushback capped", &caError{pushback: 48 * time.Hour}, Failure{Overloaded: true, Pushback: RetryOverloadMax}},
		{"nil", nil, Failure{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ClassifyFailure(tt.err); got != tt.want {
				t.Fatalf("ClassifyFailure = %+v, want %+v", got, tt.want)
			}
		})
	}
}
