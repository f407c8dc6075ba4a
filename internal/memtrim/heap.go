package memtrim

import (
	"context"
	"errors"
	"runtime"
	"runtime/debug"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// Defaults of HeapConfig.
const (
	// DefaultPoll is how often the load is sampled: a load read is two
	// counters, so a second costs nothing and bounds the delay.
	DefaultPoll = time.Second
	// DefaultQuiet is how long the load must stay low before a release,
	// so connections still closing are not released one by one.
	DefaultQuiet = 5 * time.Second
	// DefaultMinGap is the least time between two releases. A release is
	// a full garbage collection or two (milliseconds for a heap of tens
	// of MB), so even a load that swings all day costs little.
	DefaultMinGap = 15 * time.Second
	// DefaultMinDrop is the smallest fall of the load that is worth a
	// release: an idle SDS connection with its stream holds tens of KB,
	// so 64 of them are a few MB.
	DefaultMinDrop = 64
)

// HeapConfig configures a HeapReleaser. Zero fields get defaults.
type HeapConfig struct {
	// Load returns the current load, e.g. open connections plus open
	// streams: what the heap grows with. Required. It is called from
	// Run's goroutine only.
	Load func() int
	// Clock drives the sampling. Default the real clock.
	Clock clock.Clock
	// Logger receives a debug line per release. Default Nop.
	Logger *zap.Logger
	// Free collects garbage and returns free memory to the OS. Default
	// two garbage collections (the second empties what sync.Pools kept
	// through the first) and debug.FreeOSMemory.
	Free func()
	// ReleasePages, if set, runs after each Free: the executable's pages
	// that serving the burst faulted back in go too (e.g. Release, the
	// page release of StartupReleaser). Optional.
	ReleasePages func() (int, error)
	// Poll, Quiet, MinGap and MinDrop: see DefaultPoll and the others.
	Poll, Quiet, MinGap time.Duration
	MinDrop             int
}

// HeapReleaser returns the Go heap's free memory to the OS after the
// load falls well below its peak. An idle process allocates nothing, so
// the garbage left by thousands of closed connections would otherwise
// wait for Go's forced GC every two minutes, and the pages it frees for
// the background scavenger after that: resident memory stays near the
// peak for minutes.
type HeapReleaser struct {
	cfg    HeapConfig
	policy policy
}

// NewHeapReleaser returns a releaser for cfg. It starts no goroutines.
func NewHeapReleaser(cfg HeapConfig) (*HeapReleaser, error) {
	if cfg.Load == nil {
		return nil, errors.New("memtrim: heap releaser needs a load function")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Free == nil {
		cfg.Free = func() {
			runtime.GC()
			debug.FreeOSMemory()
		}
	}
	p := policy{quiet: cfg.Quiet, minGap: cfg.MinGap, minDrop: cfg.MinDrop}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if p.quiet <= 0 {
		p.quiet = DefaultQuiet
	}
	if p.minGap <= 0 {
		p.minGap = DefaultMinGap
	}
	if p.minDrop <= 0 {
		p.minDrop = DefaultMinDrop
	}
	return &HeapReleaser{cfg: cfg, policy: p}, nil
}

// Run samples the load every Poll and releases memory when the policy
// says so, until ctx ends; it then returns nil.
func (r *HeapReleaser) Run(ctx context.Context) error {
	log := r.cfg.Logger.Named("memtrim")
	var st trimState
	// loggedPeak is the last peak logged: a rise of MinDrop over it is.
	loggedPeak := 0
	for {
		t := r.cfg.Clock.NewTimer(r.cfg.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		load := r.cfg.Load()
		peak := max(st.peak, load)
		if peak >= loggedPeak+r.policy.minDrop {
			loggedPeak = peak
			log.Debug("heap load peak", zap.Int("peak", peak))
		}
		var release bool
		st, release = r.policy.step(st, r.cfg.Clock.Now(), load)
		if release {
			loggedPeak = load
			r.cfg.Free()
			log.Debug("heap released", zap.Int("load", load), zap.Int("peak", peak))
			if r.cfg.ReleasePages != nil {
				if n, err := r.cfg.ReleasePages(); err != nil {
					log.Debug("executable pages not released", zap.Error(err))
				} else {
					log.Debug("executable pages released", zap.Int("bytes", n))
				}
			}
		}
	}
}

// policy decides when to release: once the load has stayed at or below
// half its peak, and at least minDrop below it, for quiet, and minGap
// after the last release.
type policy struct {
	quiet, minGap time.Duration
	minDrop       int
}

// trimState is what the policy remembers between samples.
type trimState struct {
	// peak is the highest load since the last release.
	peak int
	// lowSince is when the load fell low; zero while it is not.
	lowSince time.Time
	// last is the time of the last release; zero before the first.
	last time.Time
}

// step takes one sample and returns the new state and whether to
// release now.
func (p policy) step(st trimState, now time.Time, load int) (trimState, bool) {
	st.peak = max(st.peak, load)
	if st.peak-load < p.minDrop || 2*load > st.peak {
		st.lowSince = time.Time{}
		return st, false
	}
	if st.lowSince.IsZero() {
		st.lowSince = now
	}
	if now.Sub(st.lowSince) < p.quiet || (!st.last.IsZero() && now.Sub(st.last) < p.minGap) {
		return st, false
	}
	// The memory of the fall is released: the next release needs a new
	// peak and a new fall.
	return trimState{peak: load, last: now}, true
}
