package cache

import (
	"testing"
	"time"
)

func TestRenewTime(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		name                string
		notBefore, notAfter time.Time
		ratio, jitter, u    float64
		want                time.Time
	}{
		{"default ratio renews halfway", nb, nb.Add(day), 0.5, 0.01, 0, nb.Add(12 * time.Hour)},
		{"full jitter renews earlier by jitter of lifetime", nb, nb.Add(day), 0.5, 0.01, 1, nb.Add(12*time.Hour - 864*time.Second)},
		{"half jitter", nb, nb.Add(100 * time.Second), 0.5, 0.1, 0.5, nb.Add(45 * time.Second)},
		{"small grace renews late", nb, nb.Add(100 * time.Second), 0.2, 0, 0, nb.Add(80 * time.Second)},
		{"grace of whole lifetime renews at once", nb, nb.Add(day), 1, 0, 0, nb},
		{"grace over lifetime renews at once", nb, nb.Add(day), 0.99, 0.05, 0.5, nb},
		{"zero grace renews at expiry", nb, nb.Add(day), 0, 0, 0, nb.Add(day)},
		{"inverted validity renews at once", nb.Add(day), nb, 0.5, 0, 0, nb.Add(day)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RenewTime(tt.notBefore, tt.notAfter, tt.ratio, tt.jitter, tt.u)
			if !got.Equal(tt.want) {
				t.Fatalf("RenewTime = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestShouldRenew(t *testing.T) {
	renewAt := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"before", renewAt.Add(-time.Nanosecond), false},
		{"at", renewAt, true},
		{"after", renewAt.Add(time.Hour), true},
		// time.Now carries a monotonic reading; the wall clock must decide.
		{"monotonic reading ignored", time.Now().Add(-time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := renewAt
			if tt.name == "monotonic reading ignored" {
				at = time.Now().Round(0)
			}
			if got := ShouldRenew(tt.now, at); got != tt.want {
				t.Fatalf("ShouldRenew(%s, %s) = %v, want %v", tt.now, at, got, tt.want)
			}
		})
	}
}

func TestTrustRenewTime(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		last time.Time
		want time.Time
	}{
		{"first change renews at once", time.Time{}, now},
		{"long after the last one renews at once", now.Add(-time.Hour), now},
		{"exactly the interval after the last one renews at once", now.Add(-10 * time.Second), now},
		{"soon after the last one waits for the interval", now.Add(-3 * time.Second), now.Add(7 * time.Second)},
		{"just after the last one waits the whole interval", now, now.Add(10 * time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := TrustRenewTime(now, tt.last, 10*time.Second); !got.Equal(tt.want) {
				t.Fatalf("TrustRenewTime = %s, want %s", got, tt.want)
			}
		})
	}
}
