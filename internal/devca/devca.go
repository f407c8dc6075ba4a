// Package devca is an Istio-compatible certificate authority for local use
// and tests (`sdsagent ca`). It keeps a self-signed root, its key and a
// bearer token in a state directory and signs SPIFFE workload CSRs over
// istio.v1.auth.IstioCertificateService/CreateCertificate.
//
// It is not meant for production: the root key sits unencrypted on disk and
// every caller holding the token can obtain any identity in the trust domain.
package devca

import (
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
)

// State file names inside Config.Dir.
const (
	rootCertFile = "root-cert.pem"
	caKeyFile    = "ca-key.pem"
	tokenFile    = "token"
)

const (
	// defaultTrustDomain is Kubernetes' and Istio's default.
	defaultTrustDomain = "cluster.local"
	// defaultMaxTTL matches istiod's default maximum workload certificate TTL.
	defaultMaxTTL = 24 * time.Hour
	// defaultDefaultTTL matches istiod's default workload certificate TTL.
	defaultDefaultTTL = 24 * time.Hour
	// clockSkew backdates NotBefore so that peers whose clocks run a little
	// behind accept a certificate as soon as it is issued.
	clockSkew = 10 * time.Second
	// rootValidity is long enough that a development CA never needs rotating.
	rootValidity = 10 * 365 * 24 * time.Hour
	// servingValidity is the lifetime of the in-memory TLS serving
	// certificate; it is issued anew at every start.
	servingValidity = 365 * 24 * time.Hour
	// stopGrace bounds how long Serve waits for in-flight RPCs on shutdown.
	stopGrace = 5 * time.Second
)

// defaultServerNames returns the names the serving certificate always
// carries: loopback, and istiod's service names so that agents configured
// for istiod can talk to this CA unchanged.
func defaultServerNames() []string {
	return []string{
		"localhost",
		"127.0.0.1",
		"::1",
		"istiod.istio-system.svc",
		"istiod.istio-system.svc.cluster.local",
	}
}

// Config configures a CA. The zero value of every field but Dir has a
// default.
type Config struct {
	// Dir holds root-cert.pem, ca-key.pem and token; it is created with
	// mode 0700 if missing. Two processes must not create state in the same
	// empty Dir at the same time.
	Dir string
	// TrustDomain is the only trust domain the CA signs for; default
	// "cluster.local".
	TrustDomain string
	// MaxTTL is the longest lifetime a request may ask for; longer requests
	// are refused. Default 24h.
	MaxTTL time.Duration
	// DefaultTTL is the lifetime used when a request asks for none; default
	// 24h, capped at MaxTTL.
	DefaultTTL time.Duration
	// ServerNames are extra DNS names or IP addresses for the CA's own TLS
	// serving certificate.
	ServerNames []string
	// Clock tells the time for certificate validity; default clock.Real().
	Clock clock.Clock
	// Logger receives issuance and refusal logs; default zap.NewNop().
	Logger *zap.Logger
}

// CA signs SPIFFE workload certificates for one trust domain. It is safe
// for concurrent use; its state does not change after New.
type CA struct {
	dir         string
	trustDomain string
	maxTTL      time.Duration
	defaultTTL  time.Duration
	clock       clock.Clock
	log         *zap.Logger

	signer  *signer
	rootPEM []byte
	token   []byte
	tlsCert tls.Certificate
}

// New loads the CA state from cfg.Dir, or creates it if the directory holds
// none of the state files. It starts no goroutines.
func New(cfg Config) (*CA, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, fmt.Errorf("devca: config: %w", err)
	}
	ca := &CA{
		dir:         cfg.Dir,
		trustDomain: cfg.TrustDomain,
		maxTTL:      cfg.MaxTTL,
		defaultTTL:  cfg.DefaultTTL,
		clock:       cfg.Clock,
		log:         cfg.Logger.Named("devca"),
	}
	st, err := loadOrCreateState(cfg.Dir, cfg.TrustDomain, ca.clock.Now(), ca.log)
	if err != nil {
		return nil, fmt.Errorf("devca: %w", err)
	}
	ca.signer = st.signer
	ca.rootPEM = st.rootPEM
	ca.token = st.token

	ca.tlsCert, err = ca.signer.issueServing(cfg.ServerNames, cfg.TrustDomain, ca.clock.Now())
	if err != nil {
		return nil, fmt.Errorf("devca: serving certificate: %w", err)
	}
	return ca, nil
}

// RootCertPath returns the path of the PEM root certificate that clients
// must trust, DIR/root-cert.pem.
func (ca *CA) RootCertPath() string { return filepath.Join(ca.dir, rootCertFile) }

// TokenPath returns the path of the file holding the bearer token that
// callers must present, DIR/token.
func (ca *CA) TokenPath() string { return filepath.Join(ca.dir, tokenFile) }

// RootPEM returns a copy of the PEM-encoded root certificate.
func (ca *CA) RootPEM() []byte { return append([]byte(nil), ca.rootPEM...) }

// withDefaults validates cfg and returns a copy with defaults filled in.
func withDefaults(cfg Config) (Config, error) {
	if cfg.Dir == "" {
		return cfg, errors.New("dir is required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = defaultTrustDomain
	}
	if err := validateTrustDomain(cfg.TrustDomain); err != nil {
		return cfg, fmt.Errorf("trust domain %q: %w", cfg.TrustDomain, err)
	}
	if cfg.MaxTTL < 0 {
		return cfg, fmt.Errorf("max TTL %s is negative", cfg.MaxTTL)
	}
	if cfg.DefaultTTL < 0 {
		return cfg, fmt.Errorf("default TTL %s is negative", cfg.DefaultTTL)
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = defaultMaxTTL
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = defaultDefaultTTL
	}
	cfg.DefaultTTL = min(cfg.DefaultTTL, cfg.MaxTTL)
	names := make([]string, 0, len(cfg.ServerNames))
	for _, n := range cfg.ServerNames {
		n = strings.TrimSpace(n)
		if n == "" {
			return cfg, errors.New("server names: empty name")
		}
		names = append(names, n)
	}
	cfg.ServerNames = names
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return cfg, nil
}
