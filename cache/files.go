package cache

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
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
// Some static entries are not served under their own name but feed the
// trust roots (a sink): the mounted root-cert.pem, the trust anchors and
// trust bundle files, and the CA's root file.
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
	// loaded is told the outcome of every load that changed something:
	// whether a new secret was published, or why the files were refused.
	loaded func(name string, published bool, err error)

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
	// store (initial: it is the entry's first load attempt); last is that
	// content. The sink runs on the registry's goroutine, outside mu.
	sink func(sec *Secret, initial bool)
	last *Secret
	// role names a trust file that is no resource (roleAnchors,
	// roleBundle, roleCARoot) for logs; trustDomain is a bundle's.
	role, trustDomain string
	// loaded is set after the first load attempt.
	loaded bool
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

// Expiry levels of a file-backed certificate.
const (
	expiryFine = iota
	expiryNear // less than the grace ratio of its lifetime left
	expiryPast // expired
)

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
	loaded       func(name string, published bool, err error)
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
		loaded:       cfg.loaded,
		signal:       make(chan struct{}, 1),
		entries:      map[string]*fileEntry{},
		nameErrs:     map[string]string{},
	}
}

// Roles of the trust files, the "role" key of their log lines.
const (
	roleAnchors = "trust_anchors"
	roleBundle  = "trust_bundle"
	roleCARoot  = "ca_root_cert"
)

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

// setDemand makes the file-backed names among names the ones served:
// new ones are loaded by run, the others dropped at once.
func (r *fileRegistry) setDemand(names []string) {
	wanted := slices.Clone(names)
	slices.Sort(wanted)
	wanted = slices.Compact(wanted)

	r.mu.Lock()
	nameErrs := map[string]string{}
	keep := map[string]bool{}
	added := false
	// Names already served keep their files; new names get what is left
	// of the watched-files limit, in name order.
	files := map[string]struct{}{}
	var fresh []string
	specs := map[string]fileSpec{}
	for _, name := range wanted {
		if !isFileName(name) {
			continue
		}
		spec, err := parseFileName(name)
		if err != nil {
			nameErrs[name] = err.Error()
			continue
		}
		e, ok := r.entries[name]
		switch {
		case !ok:
			fresh = append(fresh, name)
			specs[name] = spec
			continue
		case !e.static:
			for _, p := range spec.paths(r.systemRoots) {
				files[p] = struct{}{}
			}
		}
		keep[name] = true
	}
	for _, name := range fresh {
		spec := specs[name]
		if err := r.admitLocked(files, spec); err != nil {
			if r.nameErrs[name] != err.Error() {
				r.metrics.LimitRejections.WithLabelValues("watched_files").Inc()
			}
			nameErrs[name] = err.Error()
			continue
		}
		keep[name] = true
		r.entries[name] = &fileEntry{name: name, spec: spec}
		added = true
	}
	var dropped []string
	for name, e := range r.entries {
		if !e.static && !keep[name] {
			delete(r.entries, name)
			dropped = append(dropped, name)
		}
	}
	r.wanted, r.nameErrs = wanted, nameErrs
	if len(dropped) > 0 {
		// Under mu, so that a load finishing now cannot publish a
		// dropped name again.
		r.store.Update(nil, dropped)
		for _, name := range dropped {
			r.metrics.CertExpiryTimestamp.DeleteLabelValues(name)
		}
	}
	r.mu.Unlock()

	slices.Sort(dropped)
	for _, name := range dropped {
		r.log.Info("file secret dropped; no stream wants it", zap.String("resource", name))
	}
	if added || len(dropped) > 0 {
		select {
		case r.signal <- struct{}{}:
		default:
		}
	}
}

// admitLocked adds spec's files to files unless that takes files over
// the watched-files limit.
func (r *fileRegistry) admitLocked(files map[string]struct{}, spec fileSpec) error {
	var more []string
	for _, p := range spec.paths(r.systemRoots) {
		if _, ok := files[p]; !ok && !slices.Contains(more, p) {
			more = append(more, p)
		}
	}
	if r.maxFiles > 0 && len(files)+len(more) > r.maxFiles {
		return fmt.Errorf("not served: its files would take the files watched for file-cert: and file-root: names over the limit of %d; raise --max-watched-files or ask for fewer names", r.maxFiles)
	}
	for _, p := range more {
		files[p] = struct{}{}
	}
	return nil
}

// nameErrors returns, for the names streams want and the static entries,
// why each cannot be served now, and the wanted names.
func (r *fileRegistry) nameErrors() (map[string]string, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := maps.Clone(r.nameErrs)
	for name, e := range r.entries {
		if e.err != nil && e.role == "" {
			out[name] = e.err.Error()
		}
	}
	return out, slices.Clone(r.wanted)
}

// notReady says why name is not served yet.
func (r *fileRegistry) notReady(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[name]
	switch {
	case !ok:
		return fmt.Errorf("%s is not file-backed", name)
	case e.err != nil:
		return e.err
	default:
		return errors.New("files not read yet")
	}
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
		if !e.loaded {
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
		case e.spec.kind == TLSCertificate:
			sec, digest, err = loadKeyPair(e.name, e.spec.cert, e.spec.key, r.clock.Now())
		case e.spec.allowEmpty:
			sec, digest, err = loadRootsOrNone(e.name, e.spec.ca)
		default:
			sec, digest, err = loadRoots(e.name, e.spec.ca)
		}
		var zero [sha256.Size]byte
		r.apply(e, sec, digest, digest != zero, err)
	}
}

// apply records the outcome of loading e and publishes a good secret, or
// hands it to the entry's sink. Status (the loaded hook) and the expiry
// metric are updated before the snapshot, so whoever sees the new
// snapshot sees them too; the hook runs under r.mu (lock order:
// fileRegistry.mu, then Manager.mu).
func (r *fileRegistry) apply(e *fileEntry, sec *Secret, digest [sha256.Size]byte, read bool, err error) {
	r.mu.Lock()
	if r.entries[e.name] != e {
		// Dropped (or dropped and wanted again) while loading.
		r.mu.Unlock()
		return
	}
	initial := !e.loaded
	e.loaded = true
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
	if report && r.loaded != nil {
		r.loaded(e.name, published, err)
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
	static, sink := e.static, e.sink
	r.mu.Unlock()

	if published && sink != nil {
		sink(sec, initial)
	}
	if e.role != "" {
		r.logTrustFile(e, report, published, serving, err)
		return
	}
	switch {
	case !report:
	case err != nil:
		r.refused(e.name, static, serving, err)
	case published:
		fields := []zap.Field{zap.String("resource", e.name), zap.String("file", serving.Source)}
		fields = append(fields, certFields(serving)...)
		r.log.Info("file secret loaded", fields...)
	default:
		r.log.Info("file secret valid again; content unchanged", zap.String("resource", e.name), zap.String("file", serving.Source))
	}
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

// logTrustFile logs the outcome of loading a trust file (an entry with a
// role), and counts a refusal.
func (r *fileRegistry) logTrustFile(e *fileEntry, report, published bool, serving *Secret, err error) {
	if !report {
		return
	}
	fields := []zap.Field{zap.String("role", e.role)}
	if e.trustDomain != "" {
		fields = append(fields, zap.String("trust_domain", e.trustDomain))
	}
	switch {
	case err != nil:
		reason := FileUnreadable
		var fe *FileError
		if errors.As(err, &fe) {
			reason = fe.Reason
			fields = append(fields, zap.String("file", fe.Path), zap.String("reason", fe.Reason), zap.String("error", fe.Err.Error()), zap.String("hint", fe.Hint()))
		} else {
			fields = append(fields, zap.String("file", e.spec.ca), zap.String("reason", reason), zap.Error(err))
		}
		r.metrics.FileErrors.WithLabelValues(reason).Inc()
		switch {
		case serving != nil:
			r.log.Warn("trust file refused; keeping its previous content", fields...)
		case e.role == roleCARoot:
			// The CA client says what this means for the CA connection.
			r.log.Warn("trust file refused; nothing loaded from it yet", fields...)
		default:
			r.log.Error("trust file refused; nothing loaded from it yet", fields...)
		}
	case published:
		fields = append(fields, zap.String("file", serving.Source), zap.Int("certificates", len(serving.Certs)))
		r.log.Info("trust file loaded", fields...)
	default:
		fields = append(fields, zap.String("file", serving.Source))
		r.log.Info("trust file valid again; content unchanged", fields...)
	}
}

// refused logs and counts a refused load.
func (r *fileRegistry) refused(name string, static bool, serving *Secret, err error) {
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
	case static:
		r.log.Error("file secret refused; nothing to serve yet", fields...)
	default:
		r.log.Warn("file secret refused; nothing to serve yet", fields...)
	}
	r.metrics.FileErrors.WithLabelValues(reason).Inc()
}

// checkExpiry logs, once per secret and level, file-backed certificates
// that near or pass their expiry: the agent does not renew them.
func (r *fileRegistry) checkExpiry() {
	now := r.clock.Now()
	snap := r.store.Snapshot()
	type warning struct {
		name  string
		sec   *Secret
		level int
	}
	var warnings []warning
	r.mu.Lock()
	for name, e := range r.entries {
		sec := r.servedLocked(e, snap)
		if sec == nil || e.spec.system || e.role != "" {
			continue
		}
		if e.warned != sec {
			e.warned, e.warnLevel = sec, expiryFine
		}
		if level := expiryLevel(sec, now, r.graceRatio); level > e.warnLevel {
			e.warnLevel = level
			warnings = append(warnings, warning{name, sec, level})
		}
	}
	r.mu.Unlock()

	slices.SortFunc(warnings, func(a, b warning) int { return strings.Compare(a.name, b.name) })
	for _, w := range warnings {
		fields := []zap.Field{zap.String("resource", w.name), zap.String("file", w.sec.Source)}
		fields = append(fields, certFields(w.sec)...)
		if w.level == expiryPast {
			fields = append(fields, zap.Duration("expired_for", now.Round(0).Sub(w.sec.NotAfter())),
				zap.String("hint", "replace the files with a valid certificate; the agent does not renew file-backed certificates"))
			r.log.Error("file certificate expired; still serving it", fields...)
			continue
		}
		fields = append(fields, zap.Duration("remaining", w.sec.NotAfter().Sub(now.Round(0))),
			zap.String("hint", "replace the files before the certificate expires; the agent does not renew file-backed certificates"))
		r.log.Warn("file certificate nears expiry", fields...)
	}
}

// nextExpiryCheck returns when checkExpiry has something new to say.
func (r *fileRegistry) nextExpiryCheck() (time.Time, bool) {
	snap := r.store.Snapshot()
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for _, e := range r.entries {
		sec := r.servedLocked(e, snap)
		if sec == nil || e.spec.system || e.role != "" || e.warned != sec {
			continue
		}
		var at time.Time
		switch e.warnLevel {
		case expiryFine:
			at = warnTime(sec, r.graceRatio)
		case expiryNear:
			at = sec.NotAfter().Add(time.Second)
		default:
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next, !next.IsZero()
}

// expiryLevel says how close sec is to its expiry at now.
func expiryLevel(sec *Secret, now time.Time, ratio float64) int {
	now = now.Round(0)
	switch {
	case now.After(sec.NotAfter()):
		return expiryPast
	case !now.Before(warnTime(sec, ratio)):
		return expiryNear
	default:
		return expiryFine
	}
}

// warnTime is when less than ratio of sec's lifetime remains: when the
// agent would renew it, were it its own (see RenewTime).
func warnTime(sec *Secret, ratio float64) time.Time {
	c := expiringCert(sec)
	if c == nil {
		return time.Time{}
	}
	return RenewTime(c.NotBefore, c.NotAfter, ratio, 0, 0)
}

func certFields(sec *Secret) []zap.Field {
	c := expiringCert(sec)
	if c == nil {
		return nil
	}
	return []zap.Field{
		zap.String("serial", fmt.Sprintf("%x", c.SerialNumber)),
		zap.Time("not_before", c.NotBefore),
		zap.Time("not_after", c.NotAfter),
		zap.Int("certificates", len(sec.Certs)),
	}
}

// expiringCert returns the certificate whose expiry is sec's: the leaf
// of a TLSCertificate, the earliest anchor of a ValidationContext.
func expiringCert(sec *Secret) *x509.Certificate {
	if len(sec.Certs) == 0 {
		return nil
	}
	c := sec.Certs[0]
	if sec.Kind == TLSCertificate {
		return c
	}
	for _, o := range sec.Certs[1:] {
		if o.NotAfter.Before(c.NotAfter) {
			c = o
		}
	}
	return c
}
