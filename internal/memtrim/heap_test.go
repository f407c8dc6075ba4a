package memtrim

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestPolicyStep(t *testing.T) {
	p := policy{quiet: 5 * time.Second, minGap: 15 * time.Second, minDrop: 64}
	type sample struct {
		at   time.Duration // since t0
		load int
		want bool // release
	}
	tests := []struct {
		name    string
		samples []sample
	}{
		{"steady load never releases", []sample{{0, 500, false}, {10 * time.Second, 500, false}, {60 * time.Second, 500, false}}},
		{"a fall to half the peak releases after quiet", []sample{
			{0, 5000, false}, {1 * time.Second, 10, false}, {5 * time.Second, 10, false}, {6 * time.Second, 10, true},
			// Released: the same low load does not release again.
			{30 * time.Second, 10, false}, {60 * time.Second, 10, false}}},
		{"a small fall is not worth it", []sample{{0, 100, false}, {time.Second, 40, false}, {time.Minute, 40, false}}},
		{"a fall to more than half is not", []sample{{0, 5000, false}, {time.Second, 2600, false}, {time.Minute, 2600, false}}},
		{"a rise during the quiet time restarts it", []sample{
			{0, 5000, false}, {1 * time.Second, 10, false}, {4 * time.Second, 4000, false},
			{5 * time.Second, 10, false}, {9 * time.Second, 10, false}, {10 * time.Second, 10, true}}},
		{"a second fall waits for the gap", []sample{
			{0, 5000, false}, {1 * time.Second, 0, false}, {6 * time.Second, 0, true},
			{7 * time.Second, 5000, false}, {8 * time.Second, 0, false}, {13 * time.Second, 0, false},
			{20 * time.Second, 0, false}, {21 * time.Second, 0, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var st trimState
			for i, s := range tt.samples {
				var got bool
				st, got = p.step(st, t0.Add(s.at), s.load)
				if got != s.want {
					t.Fatalf("sample %d (load %d at %s): release = %v, want %v (state %+v)", i, s.load, s.at, got, s.want, st)
				}
			}
		})
	}
}

// TestHeapReleaserReleasesAfterChurn drives Run with a fake clock: a
// load of 5,000 that falls to 1 is released once, Quiet after the fall.
func TestHeapReleaserReleasesAfterChurn(t *testing.T) {
	clk := clocktest.New(t0)
	var load atomic.Int64
	load.Store(5000)
	freed := make(chan time.Time, 10)
	r, err := NewHeapReleaser(HeapConfig{
		Load:  func() int { return int(load.Load()) },
		Clock: clk,
		Free:  func() { freed <- clk.Now() },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	parked := func() {
		t.Helper()
		if !clk.WaitForTimers(1, 10*time.Second) {
			t.Fatal("Run is not waiting on the clock")
		}
	}
	// tick moves time one poll on and returns once Run has taken the
	// sample (and released, if it did) and waits again.
	tick := func() {
		t.Helper()
		parked()
		clk.Advance(DefaultPoll)
		parked()
	}
	tick() // samples the peak
	load.Store(1)
	var fellAt time.Time
	for i := 0; ; i++ {
		tick()
		if fellAt.IsZero() {
			fellAt = clk.Now()
		}
		select {
		case at := <-freed:
			if got := at.Sub(fellAt); got != DefaultQuiet {
				t.Fatalf("released %s after the fall was seen, want %s", got, DefaultQuiet)
			}
			// Nothing more while the load stays low.
			for range 30 {
				tick()
			}
			select {
			case <-freed:
				t.Fatal("released again without a new peak")
			default:
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
			return
		default:
		}
		if i > 20 {
			t.Fatal("no release 20 polls after the load fell")
		}
	}
}

func TestNewHeapReleaserNeedsLoad(t *testing.T) {
	if _, err := NewHeapReleaser(HeapConfig{}); err == nil {
		t.Fatal("no error without Load")
	}
}

// TestHeapReleaserReleasesPagesAfterFree: with ReleasePages set, a
// release frees the heap first and then the executable's pages; a page
// release that fails does not stop the next one.
func TestHeapReleaserReleasesPagesAfterFree(t *testing.T) {
	clk := clocktest.New(t0)
	var load atomic.Int64
	events := make(chan string, 10)
	fail := true
	r, err := NewHeapReleaser(HeapConfig{
		Load:  func() int { return int(load.Load()) },
		Clock: clk,
		Free:  func() { events <- "free" },
		ReleasePages: func() (int, error) {
			events <- "pages"
			if fail {
				fail = false
				return 0, errors.New("madvise: invalid argument")
			}
			return 4096, nil
		},
		MinGap: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	tick := func() {
		t.Helper()
		if !clk.WaitForTimers(1, 10*time.Second) {
			t.Fatal("Run is not waiting on the clock")
		}
		clk.Advance(DefaultPoll)
		if !clk.WaitForTimers(1, 10*time.Second) {
			t.Fatal("Run is not waiting on the clock")
		}
	}
	for round := range 2 {
		load.Store(5000)
		tick()
		load.Store(1)
		for range DefaultQuiet/DefaultPoll + 2 {
			tick()
		}
		var got []string
		for len(events) > 0 {
			got = append(got, <-events)
		}
		if !slices.Equal(got, []string{"free", "pages"}) {
			t.Fatalf("release %d: %v, want free then pages", round+1, got)
		}
	}
}
