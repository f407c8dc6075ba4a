package memtrim

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// DefaultStartupDelay lets Envoy's first requests, which arrive as the
// first certificate does, be served before startup pages are released.
const DefaultStartupDelay = 2 * time.Second

// StartupConfig configures a StartupReleaser.
type StartupConfig struct {
	// Served blocks until the first certificate is served and reports
	// true, or returns false once ctx ends. Required.
	Served func(ctx context.Context) bool
	// Clock times the delay. Default the real clock.
	Clock clock.Clock
	// Delay is waited after Served; zero means DefaultStartupDelay.
	Delay time.Duration
	// Logger receives one debug line. Default Nop.
	Logger *zap.Logger
	// Release reclaims the pages; default Release.
	Release func() (int, error)
}

// StartupReleaser releases the executable's startup pages once, after
// the first certificate is served and its first requests answered.
type StartupReleaser struct {
	cfg StartupConfig
}

// NewStartupReleaser returns a releaser for cfg. It starts no goroutines.
func NewStartupReleaser(cfg StartupConfig) (*StartupReleaser, error) {
	if cfg.Served == nil {
		return nil, errors.New("memtrim: startup releaser needs a Served function")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Delay <= 0 {
		cfg.Delay = DefaultStartupDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Release == nil {
		cfg.Release = Release
	}
	return &StartupReleaser{cfg: cfg}, nil
}

// Run waits for the first certificate and Delay, releases once and
// returns nil; it returns nil earlier, releasing nothing, if ctx ends. A
// failed release is logged, not returned: the agent works without it.
func (r *StartupReleaser) Run(ctx context.Context) error {
	if !r.cfg.Served(ctx) {
		return nil
	}
	t := r.cfg.Clock.NewTimer(r.cfg.Delay)
	select {
	case <-ctx.Done():
		t.Stop()
		return nil
	case <-t.C():
	}
	n, err := r.cfg.Release()
	if err != nil {
		r.cfg.Logger.Debug("startup memory not released", zap.Error(err))
		return nil
	}
	r.cfg.Logger.Debug("startup memory released", zap.Int("bytes_advised", n))
	return nil
}
