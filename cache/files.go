// This file is the file registry: the one goroutine that loads, watches
// and publishes file-backed secrets, whoever asked for them.

package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/filewatch"
	"github.com/sdsagent/sdsagent/internal/metrics"
)

// fileRegistry serves file-backed secrets: the mounted workload
// certificate when one is configured, and the file-cert: and file-root:
// names that SDS streams ask for, loaded when first wanted and dropped
// when no stream wants them any more. Every file is watched (see
// filewatch); a change is validated and published, a refused change is
// logged and counted while the last good secret stays served.
//
// Some static entries are not served under their own name: their sink
// gets what they load. They are the trust files (a *trustFile, see
// trustfiles.go) and the mounted root-cert.pem, which feed trust; the
// rest is what streams ask for and the mounted workload certificate.
//
// One goroutine (run) reads files and owns the watcher; setDemand and the
// readers take mu briefly and never do I/O.
type fileRegistry struct {
	store        *Store
	clock        clock.Clock
	log          *zap.Logger
	metrics      *metrics.Metrics
	graceRatio   float64
	wakeInterval time.Duration
	systemRoots  []string
	// maxFiles bounds the distinct files of the names streams want.
	maxFiles int
	watch    filewatch.Config
	// onLoad is told the outcome of every load that changed something:
	// whether a new secret was published, or why the files were refused.
	onLoad func(name string, published bool, err error)

	// signal wakes run when the set of entries changed.
	signal chan struct{}

	mu      sync.Mutex
	entries map[string]*fileEntry
	// wanted is the last demand, sorted; nameErrs holds why the wanted
	// file-backed names that are malformed cannot be served.
	wanted   []string
	nameErrs map[string]string
}

// fileEntry is one file-backed resource. Its fields are guarded by
// fileRegistry.mu.
type fileEntry struct {
	name string
	spec fileSpec
	// static entries (the mounted workload certificate, the trust files)
	// are kept whatever streams want.
	static bool
	// sink, when set, receives each newly loaded content instead of the
	// store; last is that content. The sink runs on the registry's
	// goroutine, outside mu.
	sink func(fileLoad)
	last *Secret
	// trust is set for a trust file (see trustfiles.go), nil for the
	// names streams ask for and the mounted workload certificate files.
	trust *trustFile
	// attempted is set after the first load attempt.
	attempted bool
	// digest is of the bytes last validated, good or bad, when they could
	// be read; the same bytes are not validated (nor refused) twice.
	digest    [sha256.Size]byte
	hasDigest bool
	// err is why the files are not served now; nil when they are.
	err error
	// warned is the published secret whose expiry was last logged, and
	// warnLevel how far (expiryFine, expiryNear, expiryPast).
	warned    *Secret
	warnLevel int
}

// fileLoad is a newly loaded content handed to an entry's sink.
type fileLoad struct {
	sec *Secret
	// firstAttempt is set when it comes from the entry's first load
	// attempt (at start), rather than from a change of its files.
	firstAttempt bool
}

type fileRegistryConfig struct {
	store        *Store
	clock        clock.Clock
	logger       *zap.Logger
	metrics      *metrics.Metrics
	graceRatio   float64
	wakeInterval time.Duration
	systemRoots  []string
	maxFiles     int
	watch        filewatch.Config
	onLoad       func(name string, published bool, err error)
}

func newFileRegistry(cfg fileRegistryConfig) *fileRegistry {
	return &fileRegistry{
		store:        cfg.store,
		clock:        cfg.clock,
		log:          cfg.logger.Named("files"),
		metrics:      cfg.metrics,
		graceRatio:   cfg.graceRatio,
		wakeInterval: cfg.wakeInterval,
		systemRoots:  cfg.systemRoots,
		maxFiles:     cfg.maxFiles,
		watch:        cfg.watch,
		onLoad:       cfg.onLoad,
		signal:       make(chan struct{}, 1),
		entries:      map[string]*fileEntry{},
		nameErrs:     map[string]string{},
	}
}

// addStatic serves spec under name whatever streams want. It is called
// before run starts.
func (r *fileRegistry) addStatic(name string, spec fileSpec) {
	r.addEntry(&fileEntry{name: name, spec: spec})
}

// addEntry adds a static entry, e.g. one with a sink. It is called before
// run starts.
func (r *fileRegistry) addEntry(e *fileEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e.static = true
	r.entries[e.name] = e
}

// run loads, watches and reloads the entries until ctx ends. The watcher
// is opened when there is a first file to watch, so an agent that serves
// no file holds no inotify instance.
func (r *fileRegistry) run(ctx context.Context) {
	var (
		w       *filewatch.Watcher
		changes <-chan []string
		expiry  clock.Timer
	)
	defer func() {
		if expiry != nil {
			expiry.Stop()
		}
		if w != nil {
			_ = w.Close()
		}
	}()
	apply := true // the static entries
	for {
		if apply {
			apply = false
			paths, fresh := r.pending()
			if w == nil && len(paths) > 0 {
				var err error
				if w, err = filewatch.Open(r.watch); err != nil {
					// Only a configuration error, caught by New.
					r.log.Error("file watcher not started", zap.Error(err))
				} else {
					changes = w.Changes()
				}
			}
			if w != nil {
				// Watch first, then read: a change after Set is reported.
				w.Set(paths)
			}
			r.load(fresh)
		}
		r.checkExpiry()
		if expiry != nil {
			expiry.Stop()
			expiry = nil
		}
		var expiryC <-chan time.Time
		if at, ok := r.nextExpiryCheck(); ok {
			wait := min(at.Round(0).Sub(r.clock.Now().Round(0)), r.wakeInterval)
			expiry = r.clock.NewTimer(wait)
			expiryC = expiry.C()
		}
		select {
		case <-ctx.Done():
			return
		case <-r.signal:
			apply = true
		case paths := <-changes:
			r.load(r.entriesFor(paths))
		case <-expiryC:
			expiry = nil
		}
	}
}

// pending returns every file the entries need, and the entries never
// loaded.
func (r *fileRegistry) pending() ([]string, []*fileEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	set := map[string]struct{}{}
	var fresh []*fileEntry
	for _, e := range r.entries {
		for _, p := range e.spec.paths(r.systemRoots) {
			set[p] = struct{}{}
		}
		if !e.attempted {
			fresh = append(fresh, e)
		}
	}
	return slices.Sorted(maps.Keys(set)), fresh
}

// entriesFor returns the entries that read any of paths.
func (r *fileRegistry) entriesFor(paths []string) []*fileEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*fileEntry
	for _, e := range r.entries {
		for _, p := range e.spec.paths(r.systemRoots) {
			if slices.Contains(paths, p) {
				out = append(out, e)
				break
			}
		}
	}
	return out
}

// load reads and validates each entry's files, outside the lock, and
// applies the outcome.
func (r *fileRegistry) load(entries []*fileEntry) {
	slices.SortFunc(entries, func(a, b *fileEntry) int { return strings.Compare(a.name, b.name) })
	for _, e := range entries {
		var (
			sec    *Secret
			digest [sha256.Size]byte
			err    error
		)
		switch {
		case e.spec.system:
			sec, digest, err = loadSystemRoots(e.name, r.systemRoots)
		case e.spec.crl:
			sec, digest, err = loadCRLFile(e.name, e.spec.ca)
		case e.spec.kind == TLSCertificate:
			sec, digest, err = loadKeyPair(e.name, e.spec.cert, e.spec.key, r.clock.Now())
		case e.spec.allowEmpty:
			sec, digest, err = loadRootsOrNone(e.name, e.spec.ca)
		default:
			sec, digest, err = loadRoots(e.name, e.spec.ca)
		}
		r.apply(e, sec, digest, err)
	}
}

// apply records the outcome of loading e and publishes a good secret, or
// hands it to the entry's sink. Status (the onLoad hook) and the expiry
// metric are updated before the snapshot, so whoever sees the new
// snapshot sees them too; the hook runs under r.mu (lock order:
// fileRegistry.mu, then Manager.mu).
func (r *fileRegistry) apply(e *fileEntry, sec *Secret, digest [sha256.Size]byte, err error) {
	read := digest != [sha256.Size]byte{} // the loaders set it when the files could be read
	r.mu.Lock()
	if r.entries[e.name] != e {
		// Dropped (or dropped and wanted again) while loading.
		r.mu.Unlock()
		return
	}
	first := !e.attempted
	e.attempted = true
	if read && e.hasDigest && e.digest == digest {
		r.mu.Unlock()
		return
	}
	e.digest, e.hasDigest = digest, read
	prevErr := e.err
	e.err = err
	serving := r.servedLocked(e, r.store.Snapshot())
	var published, report bool
	switch {
	case err != nil:
		report = prevErr == nil || prevErr.Error() != err.Error()
	default:
		published = !serving.SameContent(sec)
		report = published || prevErr != nil
	}
	if report && r.onLoad != nil {
		r.onLoad(e.name, published, err)
	}
	if published {
		if e.sink != nil {
			e.last = sec
		} else {
			r.metrics.CertExpiryTimestamp.WithLabelValues(e.name).Set(float64(sec.NotAfter().Unix()))
			r.store.Update([]*Secret{sec}, nil)
		}
		serving = sec
	}
	out := loadOutcome{static: e.static, published: published, serving: serving, err: err}
	sink := e.sink
	r.mu.Unlock()

	if published && sink != nil {
		sink(fileLoad{sec: sec, firstAttempt: first})
	}
	switch {
	case !report:
	case e.trust != nil:
		r.logTrustFile(e, out)
	case err != nil:
		r.refused(e.name, out)
	case published:
		fields := []zap.Field{zap.String("resource", e.name), zap.String("file", serving.Source)}
		fields = append(fields, certFields(serving)...)
		r.log.Info("file secret loaded", fields...)
	default:
		r.log.Info("file secret valid again; content unchanged", zap.String("resource", e.name), zap.String("file", serving.Source))
	}
}

// loadOutcome is what a load that is worth a log line changed.
type loadOutcome struct {
	// static is the entry's: kept whatever streams want.
	static bool
	// published is set when new content was taken (published, or given
	// to the sink).
	published bool
	// serving is what the entry serves now, nil if nothing.
	serving *Secret
	// err is why the files were refused, nil if they were not.
	err error
}

// servedLocked returns what e serves now: its sink's last content, or
// its secret in snap.
func (r *fileRegistry) servedLocked(e *fileEntry, snap *Snapshot) *Secret {
	if e.sink != nil {
		return e.last
	}
	sec, _ := snap.Get(e.name)
	return sec
}

// refused logs and counts a refused load of the entry serving name.
func (r *fileRegistry) refused(name string, out loadOutcome) {
	serving, err := out.serving, out.err
	reason := FileUnreadable
	fields := []zap.Field{zap.String("resource", name)}
	var fe *FileError
	if errors.As(err, &fe) {
		reason = fe.Reason
		fields = append(fields, zap.String("file", fe.Path), zap.String("reason", fe.Reason), zap.String("error", fe.Err.Error()), zap.String("hint", fe.Hint()))
	} else {
		fields = append(fields, zap.String("reason", reason), zap.Error(err))
	}
	switch {
	case serving != nil:
		fields = append(fields, zap.Time("serving_not_after", serving.NotAfter()))
		r.log.Warn("file secret refused; serving the previous one", fields...)
	case out.static:
		r.log.Error("file secret refused; nothing to serve yet", fields...)
	default:
		r.log.Warn("file secret refused; nothing to serve yet", fields...)
	}
	r.metrics.FileErrors.WithLabelValues(reason).Inc()
}
