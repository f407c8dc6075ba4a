// Package filewatch reports changes to a set of file paths in a way that
// survives how certificates are replaced on disk: an editor's rename over
// the file, a delete and re-create, Kubernetes' atomic writer (a "..data"
// symlink swapped to a new timestamped directory, the old one removed),
// and chains of symlinks across directories such as CSI driver mounts.
//
// It never watches a file's inode, which dies with the first atomic
// replacement. For each path it watches the parent directory of every
// symlink met while resolving the path and of the final file, re-resolves
// the path after every event that touches one of those names, and moves
// its watches to follow. Events are debounced, so a write in several
// steps is reported once, and every path is also reported at a slow
// interval, a safety net against events that are lost (a queue overflow,
// a directory above the watched ones swapped). Reports say "look again";
// the consumer compares content.
package filewatch

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// Defaults of Config.
const (
	// DefaultDebounce is long enough to cover a writer's truncate, write
	// and rename, or kubelet's swap, and short enough to push well within
	// a second.
	DefaultDebounce = 100 * time.Millisecond
	// DefaultMaxDelay bounds how long a steady stream of events postpones
	// a report, so a change is reported within a second. It is also the
	// polling interval when file system events are unavailable.
	DefaultMaxDelay = time.Second
	// DefaultResync re-reports every path this often: cheap (the consumer
	// compares content) and a bound on how long a lost event can hide a
	// change.
	DefaultResync = 30 * time.Second
)

// Config configures a Watcher. Zero fields get defaults.
type Config struct {
	// Debounce is how long a path must see no event before it is
	// reported.
	Debounce time.Duration
	// MaxDelay bounds the time from a path's first event to its report.
	MaxDelay time.Duration
	// Resync is the interval at which every path is reported, events or
	// not.
	Resync time.Duration
	// Clock drives the timers. Default the real clock.
	Clock clock.Clock
	// Logger receives the watcher's logs, under the name "filewatch".
	Logger *zap.Logger
}

// Watcher watches a set of paths; see the package documentation. Set,
// Changes, Dirs and Close are safe for concurrent use.
type Watcher struct {
	cfg     Config
	log     *zap.Logger
	fsw     *fsnotify.Watcher // nil: polling only
	changes chan []string
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once

	mu      sync.Mutex
	targets map[string]chain // by path as given to Set
	dirs    map[string]*dirWatch
}

// dirWatch is one watched directory, shared by the paths that need it.
type dirWatch struct {
	refs int
	// info identifies the directory watched, so that a directory replaced
	// under the same name is noticed and watched again.
	info os.FileInfo
}

// Open returns a Watcher that watches nothing yet and starts its
// goroutine; Close stops it. When the system cannot give it file system
// events (inotify limits), it logs why and polls every MaxDelay instead.
func Open(cfg Config) (*Watcher, error) {
	if cfg.Debounce < 0 || cfg.MaxDelay < 0 || cfg.Resync < 0 {
		return nil, errors.New("filewatch: durations must not be negative")
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = DefaultMaxDelay
	}
	cfg.MaxDelay = max(cfg.MaxDelay, cfg.Debounce)
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	w := &Watcher{
		cfg:     cfg,
		log:     cfg.Logger.Named("filewatch"),
		changes: make(chan []string),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		targets: map[string]chain{},
		dirs:    map[string]*dirWatch{},
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		w.log.Error("file system events unavailable; polling files instead",
			zap.Error(err), zap.Duration("poll_interval", cfg.MaxDelay),
			zap.String("hint", "raise fs.inotify.max_user_instances (sysctl) on this node"))
	} else {
		w.fsw = fsw
	}
	go w.loop()
	return w, nil
}

// Changes delivers batches of paths, as given to Set, that may have
// changed: after their events settle, at every resync, and never for a
// path before it is Set. The consumer reads them again and compares.
func (w *Watcher) Changes() <-chan []string { return w.changes }

// Set replaces the set of watched paths. When it returns, the watches for
// new paths are in place, so a consumer that reads a new path after Set
// misses no change. Relative paths are taken from the working directory.
func (w *Watcher) Set(paths []string) {
	want := make(map[string]struct{}, len(paths))
	for _, p := range paths {
		want[p] = struct{}{}
	}
	w.mu.Lock()
	for p, c := range w.targets {
		if _, ok := want[p]; !ok {
			delete(w.targets, p)
			w.releaseLocked(c.dirs)
		}
	}
	for p := range want {
		if _, ok := w.targets[p]; !ok {
			w.refreshLocked(p)
		}
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close stops the watcher and waits for its goroutine. It is idempotent.
func (w *Watcher) Close() error {
	var err error
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		if w.fsw != nil {
			err = w.fsw.Close()
		}
	})
	return err
}

// refreshLocked resolves p again and moves its watches: new directories
// are watched before old ones are released, so a directory both need is
// never unwatched in between.
func (w *Watcher) refreshLocked(p string) {
	abs, err := filepath.Abs(p)
	if err != nil {
		abs = p
	}
	old, had := w.targets[p]
	c := resolve(abs)
	w.acquireLocked(c.dirs)
	if had {
		w.releaseLocked(old.dirs)
	}
	w.targets[p] = c
	for _, d := range c.dirs {
		w.verifyLocked(d)
	}
}

func (w *Watcher) acquireLocked(dirs []string) {
	for _, d := range dirs {
		if dw, ok := w.dirs[d]; ok {
			dw.refs++
			continue
		}
		dw := &dirWatch{refs: 1}
		w.dirs[d] = dw
		w.addLocked(d, dw)
	}
}

func (w *Watcher) releaseLocked(dirs []string) {
	for _, d := range dirs {
		dw, ok := w.dirs[d]
		if !ok {
			continue
		}
		if dw.refs--; dw.refs > 0 {
			continue
		}
		delete(w.dirs, d)
		if w.fsw != nil {
			// Fails when the directory is gone, which removed the watch.
			_ = w.fsw.Remove(d)
		}
	}
}

// addLocked watches d and records which directory that is.
func (w *Watcher) addLocked(d string, dw *dirWatch) {
	dw.info = nil
	if w.fsw != nil {
		if err := w.fsw.Add(d); err != nil {
			// Gone since it was resolved, or not readable: the event that
			// removed it, or the next resync, resolves the path again.
			w.log.Debug("directory not watched", zap.String("dir", d), zap.Error(err))
			return
		}
	}
	if fi, err := os.Stat(d); err == nil {
		dw.info = fi
	}
}

// verifyLocked watches d again if the directory under that name is not
// the one watched: removed and re-created, or a directory above it
// swapped, which inotify does not report.
func (w *Watcher) verifyLocked(d string) {
	dw, ok := w.dirs[d]
	if !ok {
		return
	}
	fi, err := os.Stat(d)
	if err == nil && dw.info != nil && os.SameFile(dw.info, fi) {
		return
	}
	if w.fsw != nil {
		_ = w.fsw.Remove(d)
	}
	w.addLocked(d, dw)
}

// touched re-resolves the paths an event on name can affect and returns
// them.
func (w *Watcher) touched(name string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if dw, ok := w.dirs[name]; ok {
		// The watched directory itself was removed, moved or created:
		// fsnotify may have dropped its watch, so watch it again.
		dw.info = nil
	}
	var out []string
	for p, c := range w.targets {
		if c.affects(name) {
			out = append(out, p)
		}
	}
	for _, p := range out {
		w.refreshLocked(p)
	}
	return out
}

// refresh re-resolves paths (all of them when paths is nil) and checks
// every watched directory; it returns the paths still watched.
func (w *Watcher) refresh(paths map[string]struct{}) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if paths == nil {
		if w.fsw != nil {
			watched := map[string]bool{}
			for _, d := range w.fsw.WatchList() {
				watched[d] = true
			}
			for d, dw := range w.dirs {
				if !watched[d] {
					dw.info = nil
				}
			}
		}
		for d := range w.dirs {
			w.verifyLocked(d)
		}
	}
	var out []string
	for p := range w.targets {
		if _, ok := paths[p]; ok || paths == nil {
			w.refreshLocked(p)
			out = append(out, p)
		}
	}
	return out
}

func (w *Watcher) watching() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.targets) > 0
}

// loop turns file system events and timers into reports on Changes.
func (w *Watcher) loop() {
	defer close(w.done)
	defer close(w.changes)
	var (
		events  <-chan fsnotify.Event
		errs    <-chan error
		polling = w.fsw == nil
	)
	if !polling {
		events, errs = w.fsw.Events, w.fsw.Errors
	}

	pending := map[string]struct{}{} // events seen, not yet settled
	ready := map[string]struct{}{}   // settled, not yet delivered
	var (
		debounce   clock.Timer
		firstEvent time.Time
		resync     clock.Timer
	)
	stopTimer := func(t *clock.Timer) {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
	defer stopTimer(&debounce)
	defer stopTimer(&resync)
	// The resync timer runs only while something is watched, so an idle
	// watcher holds no timer.
	armResync := func() {
		switch {
		case !w.watching():
			stopTimer(&resync)
		case resync == nil:
			interval := w.cfg.Resync
			if polling {
				interval = min(interval, w.cfg.MaxDelay)
			}
			resync = w.cfg.Clock.NewTimer(interval)
		}
	}
	mark := func(paths []string) {
		if len(paths) == 0 {
			return
		}
		for _, p := range paths {
			pending[p] = struct{}{}
		}
		now := w.cfg.Clock.Now()
		if debounce == nil {
			firstEvent = now
		}
		stopTimer(&debounce)
		wait := min(w.cfg.Debounce, firstEvent.Add(w.cfg.MaxDelay).Sub(now))
		debounce = w.cfg.Clock.NewTimer(wait)
	}

	for {
		var (
			out       chan<- []string
			batch     []string
			debounceC <-chan time.Time
			resyncC   <-chan time.Time
		)
		if len(ready) > 0 {
			out = w.changes
			batch = slices.Sorted(maps.Keys(ready))
		}
		if debounce != nil {
			debounceC = debounce.C()
		}
		if resync != nil {
			resyncC = resync.C()
		}
		select {
		case <-w.stop:
			return
		case <-w.wake:
			armResync()
		case ev, ok := <-events:
			if !ok {
				w.log.Error("file system events stopped; polling files instead", zap.Duration("poll_interval", w.cfg.MaxDelay))
				events, errs, polling = nil, nil, true
				stopTimer(&resync)
				armResync()
				continue
			}
			mark(w.touched(filepath.Clean(ev.Name)))
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.log.Warn("file system events lost; reading every watched file again", zap.Error(err))
				mark(w.refresh(nil))
				continue
			}
			w.log.Warn("file system watch error", zap.Error(err))
		case <-debounceC:
			debounce = nil
			for _, p := range w.refresh(pending) {
				ready[p] = struct{}{}
			}
			clear(pending)
		case <-resyncC:
			resync = nil
			for _, p := range w.refresh(nil) {
				ready[p] = struct{}{}
			}
			armResync()
		case out <- batch:
			clear(ready)
		}
	}
}
