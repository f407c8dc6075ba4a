// This file is the Manager: what it serves and its public API. It wires
// the parts together (renewal loop, mounted files, trust roots, file
// registry) and publishes the trust roots with the workload certificate.

package cache

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/filewatch"
)

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
	// leafRevoked wakes the renewal loop when the leaf is in a CRL.
	leafRevoked chan struct{}

	// publishMu keeps snapshots that carry the trust roots in the order
	// of the changes (lock order: publishMu, trust.mu, Store.mu).
	publishMu sync.Mutex

	mu     sync.Mutex
	status Status
	// expiredCert is the workload certificate whose expiry was reported.
	expiredCert *Secret
	// parked is true while the renewal loop waits for its next wake-up.
	parked atomic.Bool
}

// New returns a Manager. It starts nothing; call Run.
func New(cfg Config) (*Manager, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:           cfg,
		log:           cfg.Logger.Named("cache"),
		store:         NewStore(cfg.Clock),
		caRootChanged: make(chan struct{}, 1),
		leafRevoked:   make(chan struct{}, 1),
	}
	m.trust = newTrust(trustConfig{
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
		onLoad: m.fileLoaded,
	})
	if cfg.MountedCertDir != "" {
		m.addMountedFiles()
	}
	m.addTrustFiles()
	m.addCRLFile()
	return m, nil
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
	want := slices.Contains(names, AllBundlesName)
	m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.setWantAll(want, chain) })
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
	filesDone, crlDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(filesDone)
		m.files.run(ctx)
	}()
	go func() {
		defer close(crlDone)
		m.runCRL(ctx)
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
	<-crlDone
	return nil
}

// updateTrust publishes what change returns, the trust roots, in one
// snapshot with cert, the new workload certificate (nil if it did not
// change), then logs the change. change gets the workload chain served
// with the roots: cert's, or else the one served now. The expiry metric
// is set first, so whoever sees the new snapshot sees it. publishMu keeps
// snapshots in the order of the changes.
func (m *Manager) updateTrust(cert *Secret, change func(chain []*x509.Certificate) rootsUpdate) {
	m.publishMu.Lock()
	var chain []*x509.Certificate
	if cert != nil {
		chain = cert.Certs
	} else if served, ok := m.store.Snapshot().Get(WorkloadCertName); ok {
		chain = served.Certs
	}
	u := change(chain)
	set := u.set
	if cert != nil {
		set = append([]*Secret{cert}, set...)
	}
	for _, sec := range set {
		m.cfg.Metrics.CertExpiryTimestamp.WithLabelValues(sec.Name).Set(float64(sec.NotAfter().Unix()))
	}
	if len(set)+len(u.remove) > 0 {
		m.store.Update(set, u.remove)
	}
	if slices.Contains(u.remove, AllBundlesName) {
		m.cfg.Metrics.CertExpiryTimestamp.DeleteLabelValues(AllBundlesName)
	}
	m.publishMu.Unlock()
	if u.report != nil {
		u.report()
	}
}
