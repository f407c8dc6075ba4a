package memtrim

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
)

// startupRun starts a StartupReleaser whose first certificate is served
// when served is closed; released receives each Release call.
func startupRun(t *testing.T, ctx context.Context, served chan struct{}, release func() (int, error)) (*clocktest.Fake, <-chan error, *observer.ObservedLogs) {
	t.Helper()
	clk := clocktest.New(t0)
	core, logs := observer.New(zap.DebugLevel)
	r, err := NewStartupReleaser(StartupConfig{
		Served: func(ctx context.Context) bool {
			select {
			case <-served:
				return true
			case <-ctx.Done():
				return false
			}
		},
		Clock:   clk,
		Logger:  zap.New(core),
		Release: release,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return clk, done, logs
}

// TestStartupReleaserWaitsForCertificateThenDelay drives the release on
// a fake clock: nothing before the first certificate, nothing before
// DefaultStartupDelay after it, exactly one release then.
func TestStartupReleaserWaitsForCertificateThenDelay(t *testing.T) {
	served := make(chan struct{})
	calls := make(chan struct{}, 10)
	clk, done, logs := startupRun(t, t.Context(), served, func() (int, error) {
		calls <- struct{}{}
		return 4096, nil
	})
	// Time passing before the certificate starts no delay.
	clk.Advance(time.Hour)
	if n := clk.Timers(); n != 0 {
		t.Fatalf("%d timers before the first certificate, want 0", n)
	}
	close(served)
	if !clk.WaitForTimers(1, 10*time.Second) {
		t.Fatal("no delay timer after the first certificate")
	}
	// The fake clock fires due timers inside Advance: a timer still
	// pending after it means no release can have started.
	clk.Advance(DefaultStartupDelay - time.Nanosecond)
	if n := clk.Timers(); n != 1 {
		t.Fatalf("%d timers pending just before the delay ends, want 1 (the delay)", n)
	}
	clk.Advance(time.Nanosecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 {
		t.Fatalf("%d releases, want 1", len(calls))
	}
	if got := logs.FilterMessage("startup memory released").Len(); got != 1 {
		t.Fatalf("%d 'startup memory released' lines, want 1", got)
	}
}

// TestStartupReleaserStopsWithoutRelease: a context ending before the
// certificate, or during the delay, releases nothing and returns nil.
func TestStartupReleaserStopsWithoutRelease(t *testing.T) {
	for _, during := range []string{"before certificate", "during delay"} {
		t.Run(during, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			served := make(chan struct{})
			clk, done, _ := startupRun(t, ctx, served, func() (int, error) {
				t.Error("released after the context ended")
				return 0, nil
			})
			if during == "during delay" {
				close(served)
				if !clk.WaitForTimers(1, 10*time.Second) {
					t.Fatal("no delay timer after the first certificate")
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if n := clk.Timers(); n != 0 {
				t.Fatalf("%d timers left after Run returned, want 0", n)
			}
		})
	}
}

// TestStartupReleaserLogsFailure: a failed release (an old kernel) is a
// debug line, not an error that would stop the agent.
func TestStartupReleaserLogsFailure(t *testing.T) {
	served := make(chan struct{})
	close(served)
	clk, done, logs := startupRun(t, t.Context(), served, func() (int, error) {
		return 0, errors.New("madvise: invalid argument")
	})
	if !clk.WaitForTimers(1, 10*time.Second) {
		t.Fatal("no delay timer after the first certificate")
	}
	clk.Advance(DefaultStartupDelay)
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got := logs.FilterMessage("startup memory not released").Len(); got != 1 {
		t.Fatalf("%d 'startup memory not released' lines, want 1", got)
	}
}

func TestNewStartupReleaserNeedsServed(t *testing.T) {
	if _, err := NewStartupReleaser(StartupConfig{}); err == nil {
		t.Fatal("NewStartupReleaser without Served: no error")
	}
}
