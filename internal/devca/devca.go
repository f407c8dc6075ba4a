// Package devca is an Istio-compatible certificate authority for local use
// and tests (`sdsagent ca`). It keeps a signing key and a bearer token in a
// state directory and signs SPIFFE workload CSRs over
// istio.v1.auth.IstioCertificateService/CreateCertificate.
//
// The signing key is either a self-signed root the CA creates on first
// start, or an intermediate CA plugged in with Istio's file layout
// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), such as
// InitRoot and InitIntermediate create for an offline root shared by
// several meshes.
//
// It is not meant for production: the CA key sits unencrypted on disk.
// By default every caller holding the token can obtain any identity in the
// trust domain; with Config.JWKSFile it accepts Kubernetes service-account
// tokens instead and binds each to its own service account's identity.
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
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/ratelog"
)

// State file names inside Config.Dir, and in the directories InitRoot and
// InitIntermediate write. The plugged-in names are Istio's.
const (
	rootCertFile  = "root-cert.pem"
	caKeyFile     = "ca-key.pem"
	tokenFile     = "token"
	caCertFile    = "ca-cert.pem"
	certChainFile = "cert-chain.pem"
	rootKeyFile   = "root-key.pem"
)

// Mode says what signs the workload certificates.
type Mode string

// The modes of a CA.
const (
	// ModeSelfSignedRoot signs with a self-signed root the CA created in
	// its directory.
	ModeSelfSignedRoot Mode = "self-signed-root"
	// ModeIntermediate signs with an intermediate CA plugged in with
	// Istio's files; the root's key is elsewhere.
	ModeIntermediate Mode = "intermediate"
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
// default (for MaxPendingCSRs: no bound).
type Config struct {
	// Dir holds the CA's state; it is created with mode 0700 if missing.
	// If Dir holds ca-cert.pem or cert-chain.pem, the CA is an
	// intermediate: Dir must then hold all of Istio's plugged-in files
	// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), and token
	// is created if missing. Otherwise Dir holds a self-signed
	// root-cert.pem, its ca-key.pem and token, all created on first start.
	// Two processes must not create state in the same empty Dir at the
	// same time.
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
	// CRLValidity is the lifetime of the CRL RunCRL publishes; default
	// DefaultCRLValidity.
	CRLValidity time.Duration
	// Clock tells the time for certificate validity and token checks, and
	// paces the JWKS file watch; default clock.Real().
	Clock clock.Clock
	// Logger receives issuance and refusal logs; default zap.NewNop().
	Logger *zap.Logger
	// JWKSFile, when set, replaces the development token: callers present
	// a Kubernetes service-account token signed by a key of this JWKS file
	// (kubectl get --raw /openid/v1/jwks), and system:serviceaccount:NS:SA
	// may get only spiffe://TD/ns/NS/sa/SA. Serve reloads the file when it
	// changes.
	JWKSFile string
	// JWTIssuer is the iss the tokens must carry; required with JWKSFile.
	JWTIssuer string
	// JWTAudience is an aud the tokens must carry; default
	// DefaultJWTAudience.
	JWTAudience string
	// MaxPendingCSRs bounds the certificate requests handled at once: one
	// more is answered ResourceExhausted with a grpc-retry-pushback-ms
	// trailer that gives it the next free slot. Zero: no bound (see
	// DefaultMaxPendingCSRs for `sdsagent ca`'s).
	MaxPendingCSRs int
}

// CA signs SPIFFE workload certificates for one trust domain. It is safe
// for concurrent use; its state does not change after New, except the
// JWKS keys Serve reloads.
type CA struct {
	dir         string
	trustDomain string
	maxTTL      time.Duration
	defaultTTL  time.Duration
	crlValidity time.Duration
	clock       clock.Clock
	log         *zap.Logger

	signer  *signer
	rootPEM []byte
	token   []byte
	tlsCert tls.Certificate
	jwt     *jwtAuth // nil: the development token

	admission *admission
	// overloadLog rate-limits the log lines of requests refused for load.
	overloadLog *ratelog.Limiter
}

// New loads the CA state from cfg.Dir, or creates a self-signed root if
// the directory holds none of the state files. An error names the file
// that is missing or wrong; New never overwrites a file. It starts no
// goroutines.
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
		crlValidity: cfg.CRLValidity,
		clock:       cfg.Clock,
		log:         cfg.Logger.Named("devca"),
		admission:   newAdmission(cfg.MaxPendingCSRs, cfg.Clock),
		overloadLog: ratelog.NewLimiter(cfg.Clock, 1, overloadLogEvery),
	}
	if cfg.JWKSFile != "" {
		if ca.jwt, err = newJWTAuth(cfg.JWKSFile, cfg.JWTIssuer, cfg.JWTAudience); err != nil {
			return nil, fmt.Errorf("devca: %w", err)
		}
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

// RootPEM returns a copy of root-cert.pem: the PEM-encoded root
// certificate (or certificates, when a plugged-in root-cert.pem holds
// several).
func (ca *CA) RootPEM() []byte { return append([]byte(nil), ca.rootPEM...) }

// Mode says whether a self-signed root or a plugged-in intermediate signs.
func (ca *CA) Mode() Mode {
	if ca.signer.intermediate() {
		return ModeIntermediate
	}
	return ModeSelfSignedRoot
}

// withDefaults validates cfg and returns a copy with defaults filled in.
func withDefaults(cfg Config) (Config, error) {
	if cfg.Dir == "" {
		return cfg, errors.New("dir is required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = defaultTrustDomain
	}
	if err := pki.CheckTrustDomain(cfg.TrustDomain); err != nil {
		return cfg, err
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
	if cfg.MaxPendingCSRs < 0 {
		return cfg, fmt.Errorf("max pending CSRs %d is negative", cfg.MaxPendingCSRs)
	}
	if cfg.CRLValidity < 0 {
		return cfg, fmt.Errorf("CRL validity %s is negative", cfg.CRLValidity)
	}
	if cfg.CRLValidity == 0 {
		cfg.CRLValidity = DefaultCRLValidity
	}
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
