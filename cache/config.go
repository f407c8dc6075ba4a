// This file holds Config, its defaults and its checks.

package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
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
	// CRLFile, when set, is a PEM file of CRLs served in ROOTCA (see
	// crl.go): watched like TrustAnchorsFile; a CRL no trusted CA signed
	// is refused. The workload certificate is renewed at once when it is
	// in one.
	CRLFile string
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

// withDefaults checks cfg and returns it with defaults applied.
func withDefaults(cfg Config) (Config, error) {
	mounted := cfg.MountedCertDir != ""
	if cfg.ID.IsZero() && !mounted {
		return Config{}, errors.New("cache: workload SPIFFE ID is required")
	}
	if cfg.Signer == nil && !mounted {
		return Config{}, errors.New("cache: signer is required (or a mounted certificate directory)")
	}
	if cfg.FileDebounce < 0 || cfg.FileResync < 0 {
		return Config{}, errors.New("cache: file debounce and resync must not be negative")
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
		return Config{}, fmt.Errorf("cache: TTL %s must be positive", cfg.TTL)
	}
	if cfg.GraceRatio == 0 {
		cfg.GraceRatio = DefaultGraceRatio
	}
	if cfg.GraceRatio < 0 || cfg.GraceRatio >= 1 {
		return Config{}, fmt.Errorf("cache: grace ratio %v must be in (0,1)", cfg.GraceRatio)
	}
	if cfg.GraceJitter < 0 || cfg.GraceRatio+cfg.GraceJitter >= 1 {
		return Config{}, fmt.Errorf("cache: grace jitter %v must be >= 0 and ratio+jitter below 1", cfg.GraceJitter)
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
		return Config{}, fmt.Errorf("cache: max watched files %d must not be negative", cfg.MaxWatchedFiles)
	}
	if cfg.MaxWatchedFiles == 0 {
		cfg.MaxWatchedFiles = DefaultMaxWatchedFiles
	}
	if cfg.RootOverlap < 0 {
		return Config{}, fmt.Errorf("cache: root overlap %s must not be negative", cfg.RootOverlap)
	}
	if cfg.RootOverlap == 0 {
		cfg.RootOverlap = cfg.TTL
	}
	if err := checkTrustBundles(cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
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
