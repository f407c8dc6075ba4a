package cache

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/filewatch"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// Signer sends a CSR to a CA and returns the chain it signed, leaf first
// and root last. It makes one attempt; the Manager owns retries. It must be
// safe for concurrent use and honour ctx.
type Signer interface {
	Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error)
}

// Defaults, as Istio's agent has them.
const (
	DefaultTTL         = 24 * time.Hour
	DefaultGraceRatio  = 0.5
	DefaultGraceJitter = 0.01
	// DefaultRetryInitial is short so that a CA that comes up late is seen
	// quickly at startup.
	DefaultRetryInitial = 500 * time.Millisecond
	// DefaultRetryMax bounds the wait between CSR attempts while the CA
	// is failing: long enough not to hammer it, short enough to recover fast.
	DefaultRetryMax = 30 * time.Second
	// DefaultWakeInterval bounds how long the renewal loop sleeps before it
	// looks at the wall clock again; timers stop while a host is suspended.
	DefaultWakeInterval = time.Minute
	// DefaultMaxWatchedFiles leaves room for many file-cert: and
	// file-root: names (two files per certificate) while keeping a client
	// from taking the user's inotify watches.
	DefaultMaxWatchedFiles = 512
	// TrustRenewMinInterval is the least time between two renewals caused
	// by changes of Config.CARootCertFile: a file rewritten again and
	// again must not make the agent hammer its CA, while one change (the
	// usual case) renews at once.
	TrustRenewMinInterval = 10 * time.Second
)

// Config configures a Manager.
type Config struct {
	// ID is the workload identity put in every CSR.
	ID pki.ID
	// KeyType is the algorithm of the key generated for every CSR.
	KeyType pki.KeyType
	// TTL is the certificate lifetime requested from the CA.
	TTL time.Duration
	// GraceRatio and GraceJitter place renewal, see RenewTime.
	GraceRatio, GraceJitter float64
	// Signer is the CA. It is not used, and may be nil, with
	// MountedCertDir.
	Signer Signer
	// MountedCertDir, when set, makes the workload certificate come from
	// files instead of a CA: MountedCertChainFile and MountedKeyFile in
	// it are served as "default", MountedRootCertFile as "ROOTCA", each
	// read again when it changes. Nothing renews them.
	MountedCertDir string
	// CARootCertFile holds the roots that verify the CA's TLS certificate.
	// When its content changes the workload certificate is renewed at
	// once (see TrustRenewTime): during a root rotation it is where the
	// new root shows up. Empty: not watched.
	CARootCertFile string
	// TrustAnchorsFile, when set, is a PEM file of roots that ROOTCA
	// carries after the CA's own (see the trust roots order in the
	// README). It is watched; a file of only white space means none; a
	// broken one is refused, logged, and the previous anchors stay.
	TrustAnchorsFile string
	// RootOverlap is how long a root the CA no longer signs under stays in
	// ROOTCA, counted from the first chain that ended in another root.
	// Default TTL: by then every certificate a peer got under the old root
	// has expired.
	RootOverlap time.Duration
	// SPIFFEValidator serves ROOTCA in the form of Envoy's SPIFFE
	// certificate validator (one bundle per trust domain) instead of
	// trusted_ca. ALL always has that form.
	SPIFFEValidator bool
	// TrustBundleFiles are the roots of federated trust domains, each
	// served as its own bundle in the SPIFFE form; watched like
	// TrustAnchorsFile, but an empty file is refused.
	TrustBundleFiles []TrustBundleFile
	// FileDebounce and FileResync shape how file-backed secrets are
	// watched (see filewatch.Config); zero means filewatch's defaults.
	FileDebounce, FileResync time.Duration
	// SystemRootFiles are the candidates for file-root:system, the
	// first that exists being served. Default DefaultSystemRootFiles().
	SystemRootFiles []string
	// MaxWatchedFiles bounds the distinct files that file-cert: and
	// file-root: names may make the agent watch (each takes an inotify
	// watch from the user's limit). A name that would go over it is not
	// served, and NameErrors says why. Default DefaultMaxWatchedFiles.
	MaxWatchedFiles int
	// RetryInitial and RetryMax shape the waits between failed attempts
	// (see RetryWait).
	RetryInitial, RetryMax time.Duration
	// WakeInterval is the longest the loop sleeps without checking the
	// wall clock.
	WakeInterval time.Duration
	// AttemptTimeout bounds one CSR attempt on Clock. Default
	// DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// Rand returns a uniform draw in [0,1) for the renewal jitter.
	Rand func() float64
	// Clock, Logger and Metrics default to the real clock, a no-op logger
	// and unregistered metrics.
	Clock   clock.Clock
	Logger  *zap.Logger
	Metrics *metrics.Metrics
}

// TrustBundleFile is a PEM file of the roots of a federated SPIFFE trust
// domain.
type TrustBundleFile struct {
	TrustDomain string
	Path        string
}

// Names of the mounted workload certificate files in
// Config.MountedCertDir, as Istio's agent names them.
const (
	MountedCertChainFile = "cert-chain.pem"
	MountedKeyFile       = "key.pem"
	MountedRootCertFile  = "root-cert.pem"
)

// MountedCertsPresent reports whether dir holds the three mounted
// workload certificate files.
func MountedCertsPresent(dir string) bool {
	for _, f := range []string{MountedCertChainFile, MountedKeyFile, MountedRootCertFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

// Status describes the workload certificate's life for operators.
type Status struct {
	// Issued counts certificates obtained since start (from the CA, or
	// read from the mounted files).
	Issued int
	// LastIssued is when the current certificate was obtained.
	LastIssued time.Time
	// NextRenewal is when the next CSR is due: the renewal time of the
	// current certificate, or the next retry after a failure.
	NextRenewal time.Time
	// LastAttempt is when a CSR was last sent.
	LastAttempt time.Time
	// LastError is why the last attempt failed; empty after a success.
	LastError string
	// Failures counts attempts failed since the last success.
	Failures int
}

// Manager obtains the workload certificate, renews it before it expires,
// and publishes it as "default" with its trust roots as "ROOTCA"; or,
// with Config.MountedCertDir, serves them from files. ROOTCA holds the
// roots the chain ends in, roots the CA moved away from until their
// overlap ends, and the trust anchors; ALL (and ROOTCA with
// SPIFFEValidator) add the federated trust bundles. It also serves the
// file-backed names streams ask for (file-cert:, file-root:, ALL), told
// by SetDemand.
type Manager struct {
	cfg   Config
	log   *zap.Logger
	store *Store
	files *fileRegistry
	trust *trust
	// caRootChanged wakes the renewal loop when CARootCertFile changed.
	caRootChanged chan struct{}

	mu     sync.Mutex
	status Status
	// expiredCert is the workload certificate whose expiry was reported.
	expiredCert *Secret
	// parked is true while the renewal loop waits for its next wake-up.
	parked atomic.Bool
}

// New returns a Manager. It starts nothing; call Run.
func New(cfg Config) (*Manager, error) {
	mounted := cfg.MountedCertDir != ""
	if cfg.ID.IsZero() && !mounted {
		return nil, errors.New("cache: workload SPIFFE ID is required")
	}
	if cfg.Signer == nil && !mounted {
		return nil, errors.New("cache: signer is required (or a mounted certificate directory)")
	}
	if cfg.FileDebounce < 0 || cfg.FileResync < 0 {
		return nil, errors.New("cache: file debounce and resync must not be negative")
	}
	if cfg.SystemRootFiles == nil {
		cfg.SystemRootFiles = DefaultSystemRootFiles()
	}
	if cfg.KeyType == "" {
		cfg.KeyType = pki.ECDSAP256
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("cache: TTL %s must be positive", cfg.TTL)
	}
	if cfg.GraceRatio == 0 {
		cfg.GraceRatio = DefaultGraceRatio
	}
	if cfg.GraceRatio < 0 || cfg.GraceRatio >= 1 {
		return nil, fmt.Errorf("cache: grace ratio %v must be in (0,1)", cfg.GraceRatio)
	}
	if cfg.GraceJitter < 0 || cfg.GraceRatio+cfg.GraceJitter >= 1 {
		return nil, fmt.Errorf("cache: grace jitter %v must be >= 0 and ratio+jitter below 1", cfg.GraceJitter)
	}
	if cfg.RetryInitial <= 0 {
		cfg.RetryInitial = DefaultRetryInitial
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.WakeInterval <= 0 {
		cfg.WakeInterval = DefaultWakeInterval
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(nil)
	}
	if cfg.MaxWatchedFiles < 0 {
		return nil, fmt.Errorf("cache: max watched files %d must not be negative", cfg.MaxWatchedFiles)
	}
	if cfg.MaxWatchedFiles == 0 {
		cfg.MaxWatchedFiles = DefaultMaxWatchedFiles
	}
	if cfg.RootOverlap < 0 {
		return nil, fmt.Errorf("cache: root overlap %s must not be negative", cfg.RootOverlap)
	}
	if cfg.RootOverlap == 0 {
		cfg.RootOverlap = cfg.TTL
	}
	if err := checkTrustBundles(cfg); err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:           cfg,
		log:           cfg.Logger.Named("cache"),
		store:         NewStore(cfg.Clock),
		caRootChanged: make(chan struct{}, 1),
	}
	m.trust = newTrust(trustConfig{
		store:       m.store,
		clock:       cfg.Clock,
		logger:      m.log,
		metrics:     cfg.Metrics,
		trustDomain: cfg.ID.TrustDomain(),
		overlap:     cfg.RootOverlap,
		spiffe:      cfg.SPIFFEValidator,
	})
	m.files = newFileRegistry(fileRegistryConfig{
		store:        m.store,
		clock:        cfg.Clock,
		logger:       m.log,
		metrics:      cfg.Metrics,
		graceRatio:   cfg.GraceRatio,
		wakeInterval: cfg.WakeInterval,
		systemRoots:  cfg.SystemRootFiles,
		maxFiles:     cfg.MaxWatchedFiles,
		watch: filewatch.Config{
			Debounce: cfg.FileDebounce,
			Resync:   cfg.FileResync,
			Clock:    cfg.Clock,
			Logger:   m.log,
		},
		loaded: m.fileLoaded,
	})
	if mounted {
		m.files.addStatic(WorkloadCertName, fileSpec{kind: TLSCertificate,
			cert: filepath.Join(cfg.MountedCertDir, MountedCertChainFile),
			key:  filepath.Join(cfg.MountedCertDir, MountedKeyFile)})
		m.files.addEntry(&fileEntry{name: RootCertName,
			spec: fileSpec{kind: ValidationContext, ca: filepath.Join(cfg.MountedCertDir, MountedRootCertFile)},
			sink: func(sec *Secret, _ bool) { m.trust.setPrimary(sec.Certs, sec.Source, false) }})
	} else if cfg.CARootCertFile != "" {
		m.files.addEntry(&fileEntry{name: "ca-root-cert", role: roleCARoot,
			spec: fileSpec{kind: ValidationContext, ca: cfg.CARootCertFile},
			sink: m.caRootFileChanged})
	}
	if cfg.TrustAnchorsFile != "" {
		m.files.addEntry(&fileEntry{name: "trust-anchors", role: roleAnchors,
			spec: fileSpec{kind: ValidationContext, ca: cfg.TrustAnchorsFile, allowEmpty: true},
			sink: func(sec *Secret, _ bool) { m.trust.setAnchors(sec.Certs) }})
	}
	for _, b := range cfg.TrustBundleFiles {
		td := b.TrustDomain
		m.files.addEntry(&fileEntry{name: "trust-bundle:" + td, role: roleBundle, trustDomain: td,
			spec: fileSpec{kind: ValidationContext, ca: b.Path},
			sink: func(sec *Secret, _ bool) { m.trust.setBundle(td, sec.Certs) }})
	}
	return m, nil
}

// checkTrustBundles refuses trust bundle files the SPIFFE form cannot
// serve.
func checkTrustBundles(cfg Config) error {
	if (cfg.SPIFFEValidator || len(cfg.TrustBundleFiles) > 0) && cfg.ID.IsZero() {
		return errors.New("cache: SPIFFE trust bundles need the workload SPIFFE ID, for its trust domain")
	}
	seen := map[string]bool{}
	for _, b := range cfg.TrustBundleFiles {
		switch {
		case b.Path == "":
			return fmt.Errorf("cache: trust bundle of %q: empty path", b.TrustDomain)
		case b.TrustDomain == cfg.ID.TrustDomain():
			return fmt.Errorf("cache: trust bundle of %q: that is the workload's own trust domain; add extra roots for it with the trust anchors file", b.TrustDomain)
		case seen[b.TrustDomain]:
			return fmt.Errorf("cache: trust bundle of %q given twice", b.TrustDomain)
		}
		if err := pki.CheckTrustDomain(b.TrustDomain); err != nil {
			return fmt.Errorf("cache: trust bundle: %w", err)
		}
		seen[b.TrustDomain] = true
	}
	return nil
}

// Snapshot returns the secrets published now.
func (m *Manager) Snapshot() *Snapshot { return m.store.Snapshot() }

// Subscribe notifies of changes, see Store.Subscribe.
func (m *Manager) Subscribe() (<-chan struct{}, func()) { return m.store.Subscribe() }

// CheckName reports whether name is a resource the agent serves, now or
// once its files exist: "default", "ROOTCA", or a well-formed file-backed
// name. The error says what is wrong with a malformed one.
func (m *Manager) CheckName(name string) error {
	switch name {
	case WorkloadCertName, RootCertName, AllBundlesName:
		return nil
	}
	if isFileName(name) {
		_, err := parseFileName(name)
		return err
	}
	return fmt.Errorf("unknown resource name %q: this agent serves %q (workload certificate), %q (trust roots), %q (SPIFFE trust bundles), %s<cert-path>~<key-path>, %s<ca-path> and %s",
		name, WorkloadCertName, RootCertName, AllBundlesName, FileCertPrefix, FileRootPrefix, SystemRootName)
}

// SetDemand tells the manager every resource name that SDS streams want
// now. File-backed names new to the set are loaded and watched; those no
// longer in it are dropped: unwatched and removed from the snapshot; ALL
// is published while it is in the set. It does no I/O and is safe for
// concurrent use; calls must come in order (the last one wins).
func (m *Manager) SetDemand(names []string) {
	m.files.setDemand(names)
	m.trust.setWantAll(slices.Contains(names, AllBundlesName))
}

// NameErrors returns, for each wanted name that cannot be served now,
// why: a malformed or unknown name, or the last error reading its files
// (a missing file, a refused certificate). With MountedCertDir it also
// holds "default" and "ROOTCA" while their files are refused.
func (m *Manager) NameErrors() map[string]string {
	errs, wanted := m.files.nameErrors()
	for _, name := range wanted {
		if _, ok := errs[name]; ok || isFileName(name) {
			continue
		}
		if err := m.CheckName(name); err != nil {
			errs[name] = err.Error()
		}
	}
	return errs
}

// Status returns the workload certificate's status.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// Ready returns nil once "default" and "ROOTCA" are served and "default"
// has not expired, otherwise why not: past its NotAfter, since when and
// the last renewal error.
func (m *Manager) Ready() error {
	snap := m.store.Snapshot()
	cert, haveCert := snap.Get(WorkloadCertName)
	_, haveRoots := snap.Get(RootCertName)
	if haveCert && haveRoots {
		return m.expiredError(cert, m.cfg.Clock.Now())
	}
	if m.cfg.MountedCertDir != "" {
		name := WorkloadCertName
		if haveCert {
			name = RootCertName
		}
		return fmt.Errorf("no workload certificate yet: %s from %s: %w", name, m.cfg.MountedCertDir, m.files.notReady(name))
	}
	st := m.Status()
	switch {
	case st.LastError != "":
		return fmt.Errorf("no workload certificate yet: %d CSR attempts failed, last: %s", st.Failures, st.LastError)
	case st.LastAttempt.IsZero():
		return errors.New("no workload certificate yet: no CSR sent yet")
	default:
		return errors.New("no workload certificate yet: waiting for the CA to answer")
	}
}

// Run obtains the first certificate and keeps renewing it until ctx ends.
// It never gives up on a failing CA: it retries as RetryWait says (sooner
// when a Prober sees the CA come back) and keeps the last good
// certificate, reporting it expired past its NotAfter. With MountedCertDir it
// reads the files instead and calls no CA. Meanwhile it loads, watches
// and drops file-backed secrets as SetDemand asks, watches the trust
// files, drops retiring roots when their overlap ends, and renews at once
// when CARootCertFile changes. It returns nil when ctx is cancelled.
func (m *Manager) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	filesDone := make(chan struct{})
	go func() {
		defer close(filesDone)
		m.files.run(ctx)
	}()
	if dir := m.cfg.MountedCertDir; dir != "" {
		m.log.Info("serving the workload certificate from files; no CA is called",
			zap.String("cert_dir", dir),
			zap.String("cert_chain", filepath.Join(dir, MountedCertChainFile)),
			zap.String("key", filepath.Join(dir, MountedKeyFile)),
			zap.String("root_cert", filepath.Join(dir, MountedRootCertFile)))
		m.watchMountedExpiry(ctx)
	} else {
		m.renew(ctx)
	}
	cancel()
	<-filesDone
	return nil
}

// fileLoaded keeps Status for a mounted workload certificate.
func (m *Manager) fileLoaded(name string, published bool, err error) {
	if name != WorkloadCertName {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	m.status.LastAttempt = now
	switch {
	case err != nil:
		m.status.LastError = err.Error()
		m.status.Failures++
	case published:
		if m.status.Issued > 0 {
			m.cfg.Metrics.Rotations.Inc()
		}
		m.status.Issued++
		m.status.LastIssued = now
		fallthrough
	default:
		m.status.LastError = ""
		m.status.Failures = 0
	}
}

// renew is the CA renewal loop of Run.
func (m *Manager) renew(ctx context.Context) {
	policy := RetryPolicy{Initial: m.cfg.RetryInitial, Max: m.cfg.RetryMax}
	prober, _ := m.cfg.Signer.(Prober)
	var (
		renewAt time.Time // zero: issue now
		// certRenewAt is the renewal time of the current certificate.
		certRenewAt time.Time
		// failures counts attempts failed in a row.
		failures int
		// lastSent is when the last CSR attempt started.
		lastSent time.Time
		// lastTrustRenewal is when a change of the CA root file last
		// caused a renewal; trustDue marks renewAt as such a renewal.
		lastTrustRenewal time.Time
		trustDue         bool
	)
	for {
		now := m.cfg.Clock.Now()
		m.trust.expire(now)
		certEnd := m.checkExpired(now)
		// After a failure, in the last tenth of the life or expired, with
		// the CA unreachable: watch for it to come back.
		probing := prober != nil && failures > 0 && m.inLastTenth(now) && !prober.Reachable()
		if renewAt.IsZero() || ShouldRenew(now, renewAt) {
			if !renewAt.IsZero() && m.stillUnreachable(probing, prober, now, lastSent) {
				// No CSR into a connection known to be down: the probe
				// goes on, and a CSR goes out the moment it succeeds, or
				// RetryMax after the last one in case the probe is wrong.
				renewAt = lastSent.Add(m.cfg.RetryMax)
				m.setNextRenewal(renewAt)
				continue
			}
			if trustDue {
				lastTrustRenewal, trustDue = now, false
			}
			sent := now
			lastSent = now
			b, err := m.issue(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				failures++
				now := m.cfg.Clock.Now()
				wait := m.retryWait(now, certRenewAt, failures, policy)
				renewAt = now.Add(wait)
				m.setNextRenewal(renewAt)
				m.logFailure(err, wait)
			} else {
				failures = 0
				// CAs backdate NotBefore for clock skew (the dev CA by 10s,
				// others by minutes); counting the lifetime from when we
				// asked keeps a short TTL from renewing at once, forever.
				start := b.Leaf.NotBefore
				if sent.After(start) {
					start = sent
				}
				renewAt = RenewTime(start, b.Leaf.NotAfter, m.cfg.GraceRatio, m.cfg.GraceJitter, m.cfg.Rand())
				certRenewAt = renewAt
				m.setNextRenewal(renewAt)
			}
			continue
		}
		wakeAt := renewAt
		if at, ok := m.trust.nextRetirement(); ok && at.Before(wakeAt) {
			wakeAt = at
		}
		if !certEnd.IsZero() && certEnd.Before(wakeAt) {
			wakeAt = certEnd // to report the expiry at once
		}
		if at, ok := m.lastTenthAt(); ok && failures > 0 && prober != nil && now.Before(at) && at.Before(wakeAt) {
			wakeAt = at // to start probing
		}
		wait := wakeAt.Round(0).Sub(now.Round(0))
		if wait > m.cfg.WakeInterval {
			wait = m.cfg.WakeInterval
		}
		var (
			reachable <-chan struct{}
			stopProbe = func() {}
		)
		if probing {
			reachable, stopProbe = probe(ctx, prober)
		}
		m.parked.Store(true)
		t := m.cfg.Clock.NewTimer(wait)
		expected := now // the least wall-clock time at wake-up
		select {
		case <-ctx.Done():
			t.Stop()
			stopProbe()
			return
		case <-t.C():
			expected = now.Add(wait)
		case <-reachable:
			t.Stop()
			renewAt = time.Time{}
			m.log.Info("ca reachable again; renewing the workload certificate now")
		case <-m.caRootChanged:
			t.Stop()
			now := m.cfg.Clock.Now()
			at := TrustRenewTime(now, lastTrustRenewal, TrustRenewMinInterval)
			if at.Before(renewAt) {
				renewAt, trustDue = at, true
				m.setNextRenewal(renewAt)
			}
			m.log.Info("ca root file changed; renewing the workload certificate",
				zap.String("file", m.cfg.CARootCertFile), zap.Time("renew_at", renewAt))
		}
		m.parked.Store(false)
		stopProbe()
		// The timer ran its course on the monotonic clock; a wall clock
		// behind that was stepped back. Move the next attempt back as
		// much, so that renewal keeps to its schedule in real time.
		if back := expected.Round(0).Sub(m.cfg.Clock.Now().Round(0)); back > clockStepTolerance && !renewAt.IsZero() {
			renewAt = renewAt.Add(-back)
			if !certRenewAt.IsZero() {
				certRenewAt = certRenewAt.Add(-back)
			}
			m.setNextRenewal(renewAt)
			m.log.Warn("wall clock went back; renewal schedule moved back as much",
				zap.Duration("jump", -back), zap.Time("next_attempt", renewAt))
		}
	}
}

func (m *Manager) setNextRenewal(at time.Time) {
	m.mu.Lock()
	m.status.NextRenewal = at
	m.mu.Unlock()
}

// caRootFileChanged is the sink of CARootCertFile: a change after the
// first read wakes the renewal loop.
func (m *Manager) caRootFileChanged(_ *Secret, initial bool) {
	if initial {
		return
	}
	select {
	case m.caRootChanged <- struct{}{}:
	default:
	}
}

// issue makes one attempt: new key, CSR, CA call, verification, publish.
func (m *Manager) issue(ctx context.Context) (*pki.Bundle, error) {
	start := m.cfg.Clock.Now()
	m.mu.Lock()
	m.status.LastAttempt = start
	failures := m.status.Failures
	m.mu.Unlock()
	m.log.Debug("certificate request sent", zap.String("spiffe_id", m.cfg.ID.String()), zap.Int("failures_before", failures))

	actx, release := m.attemptContext(ctx)
	b, key, result, err := m.sign(actx)
	timedOut := actx.Err() != nil
	release()
	took := m.cfg.Clock.Now().Sub(start)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil && timedOut && result == metrics.ResultCAError {
		err = fmt.Errorf("no answer within %s: %w", m.cfg.AttemptTimeout, err)
	}
	m.cfg.Metrics.ObserveCSR(result, took)
	if err != nil {
		m.mu.Lock()
		m.status.LastError = err.Error()
		m.status.Failures++
		m.mu.Unlock()
		return nil, err
	}

	_, hadCert := m.store.Snapshot().Get(WorkloadCertName)
	// Status and counters first, so a subscriber woken by publish sees them.
	m.mu.Lock()
	m.status.Issued++
	m.status.LastIssued = m.cfg.Clock.Now()
	m.status.LastError = ""
	m.status.Failures = 0
	m.mu.Unlock()
	if hadCert {
		m.cfg.Metrics.Rotations.Inc()
	}
	// The chain and the roots it ends in, in one snapshot: ROOTCA always
	// trusts the served chain's root. The expiry metric is set first, so
	// whoever sees the new snapshot sees it.
	m.trust.setPrimary(b.Roots, "ca", true, &Secret{
		Name:          WorkloadCertName,
		Kind:          TLSCertificate,
		CertChainPEM:  b.ChainPEM,
		PrivateKeyPEM: key,
		Certs:         append([]*x509.Certificate{b.Leaf}, b.Intermediates...),
		Source:        "ca",
	})

	msg := "workload certificate issued"
	if hadCert {
		msg = "workload certificate rotated"
	}
	m.log.Info(msg,
		zap.String("spiffe_id", m.cfg.ID.String()),
		zap.String("serial", fmt.Sprintf("%x", b.Leaf.SerialNumber)),
		zap.Time("not_before", b.Leaf.NotBefore),
		zap.Time("not_after", b.Leaf.NotAfter),
		zap.Int("intermediates", len(b.Intermediates)),
		zap.Duration("csr_duration", took),
	)
	return b, nil
}

// sign produces a key and a verified bundle, or the metrics result and
// error of the step that failed.
func (m *Manager) sign(ctx context.Context) (*pki.Bundle, pki.PrivateKeyPEM, string, error) {
	key, err := pki.GenerateKey(m.cfg.KeyType)
	if err != nil {
		return nil, nil, metrics.ResultLocalError, err
	}
	csr, err := pki.NewCSR(key, m.cfg.ID)
	if err != nil {
		return nil, nil, metrics.ResultLocalError, err
	}
	keyPEM, err := pki.EncodePrivateKey(key)
	if err != nil {
		return nil, nil, metrics.ResultLocalError, err
	}
	pems, err := m.cfg.Signer.Sign(ctx, csr, m.cfg.TTL)
	if err != nil {
		return nil, nil, metrics.ResultCAError, fmt.Errorf("sign csr: %w", err)
	}
	chain, err := pki.ParseChain(pems)
	if err != nil {
		return nil, nil, metrics.ResultVerifyFailed, fmt.Errorf("CA answer refused: %w", &pki.VerifyError{Check: pki.CheckParse, Err: err})
	}
	b, err := pki.Verify(pki.VerifyInput{Chain: chain, Key: key.Public(), ID: m.cfg.ID, Now: m.cfg.Clock.Now()})
	if err != nil {
		return nil, nil, metrics.ResultVerifyFailed, fmt.Errorf("CA answer refused: %w", err)
	}
	return b, keyPEM, metrics.ResultSuccess, nil
}

func (m *Manager) logFailure(err error, retryIn time.Duration) {
	fields := []zap.Field{
		zap.String("spiffe_id", m.cfg.ID.String()),
		zap.Error(err),
		zap.Duration("retry_in", retryIn),
	}
	if h := hint(err); h != "" {
		fields = append(fields, zap.String("hint", h))
	}
	cur, ok := m.store.Snapshot().Get(WorkloadCertName)
	switch {
	case !ok:
		m.log.Error("certificate request failed; no workload certificate to serve yet", fields...)
	case !m.cfg.Clock.Now().Round(0).Before(cur.NotAfter()):
		// Its expiry was logged once as an error; /ready and the
		// expired gauge say the rest.
		m.log.Debug("certificate renewal failed; workload certificate expired", append(fields, zap.Time("not_after", cur.NotAfter()))...)
	default:
		m.log.Warn("certificate renewal failed; serving the previous certificate", append(fields, zap.Time("serving_not_after", cur.NotAfter()))...)
	}
}

// hint tells the operator what to look at for err.
func hint(err error) string {
	var ve *pki.VerifyError
	if errors.As(err, &ve) {
		switch ve.Check {
		case pki.CheckIdentity:
			return "the CA signed a different identity: check --trust-domain, --namespace and --service-account against the CA's configuration"
		case pki.CheckNotYetValid, pki.CheckExpired:
			return "check that this host's clock and the CA's are in sync (NTP)"
		case pki.CheckChain:
			return "the chain does not verify to its root: check the CA's signing certificate and its chain"
		default:
			return "the CA answered with something that is not a valid certificate chain for our key: check the CA"
		}
	}
	// The CA client's errors already say what to check.
	return ""
}
