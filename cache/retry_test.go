package cache

import (
	"testing"
	"time"
)

func TestRetryWait(t *testing.T) {
	p := RetryPolicy{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	nb, na := t0, t0.Add(day)
	renew := t0.Add(12 * time.Hour)
	tests := []struct {
		name     string
		now      time.Time
		nb, na   time.Time
		renewAt  time.Time
		attempt  int
		u        float64
		min, max time.Duration // the wait is in [min, max]
	}{
		{"no certificate: first retry, low draw", t0, time.Time{}, time.Time{}, time.Time{}, 1, 0, 250 * time.Millisecond, 250 * time.Millisecond},
		{"no certificate: first retry, high draw", t0, time.Time{}, time.Time{}, time.Time{}, 1, 0.999, 749 * time.Millisecond, 750 * time.Millisecond},
		{"no certificate: doubles", t0, time.Time{}, time.Time{}, time.Time{}, 3, 0.5, 2 * time.Second, 2 * time.Second},
		{"no certificate: capped at Max ±50%", t0, time.Time{}, time.Time{}, time.Time{}, 20, 0.999, 44 * time.Second, 45 * time.Second},
		{"before the renewal time: backoff as without a certificate", t0.Add(time.Hour), nb, na, renew, 20, 0, 15 * time.Second, 15 * time.Second},
		{"past renewal, 12h left: capped at Max", renew, nb, na, renew, 20, 0.999, 29 * time.Second, 30 * time.Second},
		{"past renewal: full jitter reaches low", renew, nb, na, renew, 20, 0.01, RetryMinWait, 300 * time.Millisecond},
		{"past renewal: backoff ceiling still grows from Initial", renew, nb, na, renew, 1, 0.999, 499 * time.Millisecond, 500 * time.Millisecond},
		{"100s left: a tenth is 10s", na.Add(-100 * time.Second), nb, na, renew, 20, 0.999, 9990 * time.Millisecond, 10 * time.Second},
		{"5s left: floor 1s", na.Add(-5 * time.Second), nb, na, renew, 20, 0.999, 999 * time.Millisecond, time.Second},
		{"expired: at most 2s", na.Add(time.Hour), nb, na, renew, 20, 0.999, 1998 * time.Millisecond, RetryExpiredMax},
		{"expired at exactly NotAfter", na, nb, na, renew, 20, 0.999, 1998 * time.Millisecond, RetryExpiredMax},
		{"expired: never a tight loop", na.Add(time.Hour), nb, na, renew, 20, 0, RetryMinWait, RetryMinWait},
		{"short Max caps past renewal too", na.Add(-time.Hour), nb, na, renew, 20, 0.999, 0, 30 * time.Second},
		{"1 minute TTL, past renewal: a tenth of 20s left", t0.Add(40 * time.Second), t0, t0.Add(time.Minute), t0.Add(30 * time.Second), 20, 0.999, 1990 * time.Millisecond, 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RetryWait(tt.now, tt.nb, tt.na, tt.renewAt, tt.attempt, p, tt.u)
			if got < tt.min || got > tt.max {
				t.Fatalf("RetryWait = %s, want in [%s, %s]", got, tt.min, tt.max)
			}
		})
	}
}

// TestRetryWaitFitsTimeLeft checks the bounds over a sweep of the whole
// life of a certificate and every draw: past the renewal time no wait is
// longer than a tenth of what is left (or 1s), none longer than 30s, and
// once expired none longer than 2s.
func TestRetryWaitFitsTimeLeft(t *testing.T) {
	p := RetryPolicy{Initial: 500 * time.Millisecond, Max: 30 * time.Second}
	for _, ttl := range []time.Duration{20 * time.Second, time.Hour, 24 * time.Hour} {
		nb := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
		na := nb.Add(ttl)
		renewAt := RenewTime(nb, na, 0.5, 0, 0)
		for now := renewAt; now.Before(na.Add(ttl)); now = now.Add(ttl / 997) {
			for attempt := 1; attempt < 30; attempt += 7 {
				for _, u := range []float64{0, 0.3, 0.999999} {
					w := RetryWait(now, nb, na, renewAt, attempt, p, u)
					left := na.Sub(now)
					limit := min(max(left/10, RetryFloor), p.Max)
					if left <= 0 {
						limit = RetryExpiredMax
					}
					if w > limit || w < RetryMinWait {
						t.Fatalf("ttl %s, %s left, attempt %d, u %v: wait %s, want in [%s, %s]", ttl, left, attempt, u, w, RetryMinWait, limit)
					}
				}
			}
		}
	}
}

func TestInLastTenth(t *testing.T) {
	nb := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(100 * time.Minute)
	tests := []struct {
		now  time.Time
		nb   time.Time
		na   time.Time
		want bool
	}{
		{nb, nb, na, false},
		{na.Add(-11 * time.Minute), nb, na, false},
		{na.Add(-10 * time.Minute), nb, na, true},
		{na.Add(time.Hour), nb, na, true},
		{nb, time.Time{}, time.Time{}, false},
	}
	for _, tt := range tests {
		if got := InLastTenth(tt.now, tt.nb, tt.na); got != tt.want {
			t.Errorf("InLastTenth(%s) = %v, want %v", tt.now.Sub(nb), got, tt.want)
		}
	}
}
