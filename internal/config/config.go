// Package config turns command-line flags and environment variables into
// the agent's settings. Every setting is a flag; where Istio's agent has
// the setting, Istio's environment variable name is honoured too, and a
// flag given on the command line wins over the environment.
package config

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/sds"
)

// Setting describes one flag and its environment variable.
type Setting struct {
	Flag    string
	Env     string
	Default string
	Usage   string
}

// Agent is the configuration of `sdsagent run`.
type Agent struct {
	CAAddr         string
	CARootCert     string
	CAPlaintext    bool
	CAServerName   string
	CATimeout      time.Duration
	TokenFile      string
	ClusterID      string
	TrustDomain    string
	Namespace      string
	ServiceAccount string
	Socket         string
	SocketMode     os.FileMode
	HTTPAddr       string
	ReleaseMemory  bool
	KeyType        pki.KeyType
	SecretTTL      time.Duration
	GraceRatio     float64
	GraceJitter    float64
	MountedCerts   MountedCerts
	CertDir        string
	OutputDir      string
	FileResync     time.Duration
	Log            Log
	// TrustAnchors is a PEM file of extra roots for ROOTCA; empty: none.
	TrustAnchors string
	// RootOverlap is how long ROOTCA keeps a root the CA moved away
	// from; zero means SecretTTL.
	RootOverlap     time.Duration
	SPIFFEValidator bool
	// TrustBundles are the federated trust domains' root files, in the
	// order given.
	TrustBundles []TrustBundle
	// AllowedUIDs and AllowedGIDs, when either is set, are the callers
	// (SO_PEERCRED uid, primary gid) that may connect to the socket.
	AllowedUIDs []uint32
	AllowedGIDs []uint32
	// CRLFile is a PEM file of CRLs served in ROOTCA; empty: none.
	CRLFile string
	// CAProvider is the CA protocol: ProviderIstio or ProviderCFSSL.
	CAProvider CAProvider
	// CFSSL configures the CFSSL provider (see cfssl.go).
	CFSSL CFSSL
	// Limits bound what SDS clients may ask for.
	Limits Limits
}

// TrustBundle is a --trust-bundle TD=PATH.
type TrustBundle struct {
	TrustDomain string
	Path        string
}

// MountedCerts says whether the workload certificate comes from files in
// CertDir instead of a CA (FILE_MOUNTED_CERTS).
type MountedCerts string

// Values of MountedCerts.
const (
	// MountedAuto uses the files when all three exist in CertDir at start.
	MountedAuto MountedCerts = "auto"
	// MountedOn always uses the files, waiting for them if missing.
	MountedOn MountedCerts = "true"
	// MountedOff always uses the CA.
	MountedOff MountedCerts = "false"
)

// Log configures logging.
type Log struct {
	Level  string
	Format string
}

// AgentSettings lists the settings of `sdsagent run` with their defaults,
// in the order the README's table shows them.
func AgentSettings() []Setting {
	settings := []Setting{
		{"ca-provider", "SDSAGENT_CA_PROVIDER", "istio", "CA protocol: istio (Istio's certificate service) or cfssl (a CFSSL API server, `cfssl serve`)"},
		{"ca-addr", "CA_ADDR", "istiod.istio-system.svc:15012", "address of the Istio CA (istiod, istio-csr or `sdsagent ca`); with --ca-provider cfssl the CFSSL API base URL, e.g. https://cfssl.pki.svc:8888"},
		{"ca-root-cert", "SDSAGENT_CA_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem", "PEM roots that verify the CA's TLS certificate (re-read on each connection)"},
		{"ca-plaintext", "SDSAGENT_CA_PLAINTEXT", "false", "talk to the CA without TLS (never in production)"},
		{"ca-server-name", "SDSAGENT_CA_SERVER_NAME", "", "name expected in the CA's certificate (default: host of --ca-addr)"},
		{"ca-timeout", "SDSAGENT_CA_TIMEOUT", "10s", "deadline of each CSR call"},
		{"cfssl-auth-key-file", "SDSAGENT_CFSSL_AUTH_KEY_FILE", "", "cfssl: file holding the profile's hex HMAC auth_key, re-read on every call; set: sign through /api/v1/cfssl/authsign, empty: /api/v1/cfssl/sign"},
		{"cfssl-profile", "SDSAGENT_CFSSL_PROFILE", "", "cfssl: signing profile (empty: CFSSL's default); the profile's expiry sets the certificate lifetime"},
		{"cfssl-label", "SDSAGENT_CFSSL_LABEL", "", "cfssl: signer label of a multi-root CFSSL (empty: its default signer)"},
		{"token-file", "SDSAGENT_TOKEN_FILE", "/var/run/secrets/tokens/istio-token", "bearer token sent to the CA, re-read on every call"},
		{"cluster-id", "ISTIO_META_CLUSTER_ID", "Kubernetes", "sent to the CA as the ClusterID header"},
		{"trust-domain", "TRUST_DOMAIN", "cluster.local", "SPIFFE trust domain of the workload"},
		{"namespace", "POD_NAMESPACE", "default", "Kubernetes namespace of the workload"},
		{"service-account", "SERVICE_ACCOUNT", "default", "Kubernetes service account of the workload"},
		{"socket", "SDSAGENT_SOCKET", sds.DefaultSocketPath, "Unix socket Envoy reads SDS from"},
		{"socket-mode", "SDSAGENT_SOCKET_MODE", fmt.Sprintf("%#o", sds.DefaultSocketMode), "permissions of the socket: whoever can connect gets the private key"},
		{"allowed-uids", "SDSAGENT_ALLOWED_UIDS", "", "comma-separated uids that may connect to the socket (checked with SO_PEERCRED before any SDS byte; with --allowed-gids, a caller matching either list may connect; empty: no check)"},
		{"allowed-gids", "SDSAGENT_ALLOWED_GIDS", "", "comma-separated gids that may connect to the socket, matched against the caller's primary group (empty: no check)"},
		{"http-addr", "SDSAGENT_HTTP_ADDR", "127.0.0.1:15020", "health, readiness, metrics and debug HTTP endpoint (empty disables)"},
		{"release-startup-memory", "SDSAGENT_RELEASE_STARTUP_MEMORY", "true", "once the first certificate is served, and after a burst of connections has ended, let the kernel reclaim binary pages only startup or the burst used (Linux, lowers resident memory)"},
		{"key-type", "SDSAGENT_KEY_TYPE", "ecdsa-p256", "workload key: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 (Istio's ECC_SIGNATURE_ALGORITHM, ECC_CURVE and WORKLOAD_RSA_KEY_SIZE are honoured when this is not set)"},
		{"secret-ttl", "SECRET_TTL", durationDefault(cache.DefaultTTL), "certificate lifetime requested from the CA"},
		{"grace-ratio", "SECRET_GRACE_PERIOD_RATIO", floatDefault(cache.DefaultGraceRatio), "renew when this fraction of the lifetime remains (Istio's meaning)"},
		{"grace-jitter", "SECRET_GRACE_PERIOD_RATIO_JITTER", floatDefault(cache.DefaultGraceJitter), "up to this fraction of the lifetime is added at random to the grace period"},
		{"file-mounted-certs", "FILE_MOUNTED_CERTS", "auto", "serve default and ROOTCA from cert-chain.pem, key.pem and root-cert.pem in --cert-dir instead of calling a CA: true, false, or auto (when all three files exist at start)"},
		{"cert-dir", "SDSAGENT_CERT_DIR", "/etc/certs", "directory of the mounted workload certificate files"},
		{"output-dir", "OUTPUT_CERTS", "", "after each issuance or rotation, write cert-chain.pem, key.pem (0600) and root-cert.pem here for proxyless clients (empty disables)"},
		{"file-resync", "SDSAGENT_FILE_RESYNC", "30s", "re-read every watched certificate file this often, in case a file system event was lost"},
		{"trust-anchors", "SDSAGENT_TRUST_ANCHORS", "", "PEM file of extra roots ROOTCA carries after the CA's, e.g. the next root before a root rotation (watched; white space only means none)"},
		{"root-overlap", "SDSAGENT_ROOT_OVERLAP", "", "how long ROOTCA keeps a root after the CA's answers moved to another root (default: --secret-ttl, by when every peer certificate under the old root has expired)"},
		{"spiffe-validator", "SDSAGENT_SPIFFE_VALIDATOR", "false", "serve ROOTCA for Envoy's SPIFFE certificate validator (custom_validator_config, one trust bundle per trust domain) instead of trusted_ca; the name ALL always has that form"},
		{"trust-bundle", "SDSAGENT_TRUST_BUNDLES", "", "TD=PATH: PEM roots of the federated trust domain TD, served as its own bundle in the SPIFFE form (repeatable or comma-separated; watched)"},
		{"crl-file", "SDSAGENT_CRL_FILE", "", "PEM file of CRLs (e.g. `sdsagent ca`'s crl.pem) served in ROOTCA for Envoy to refuse revoked peers; each must be signed by a root of the own trust domain or an intermediate of the workload's chain (watched; a refused file keeps the previous CRLs)"},
		{"log-level", "SDSAGENT_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"log-format", "SDSAGENT_LOG_FORMAT", "json", "json or console"},
	}
	return append(settings, limitSettings()...)
}

// ParseAgent parses the arguments of `sdsagent run`. getenv is usually
// os.Getenv.
func ParseAgent(args []string, getenv func(string) string, output io.Writer) (Agent, error) {
	fs := flag.NewFlagSet("sdsagent run", flag.ContinueOnError)
	fs.SetOutput(output)
	settings := AgentSettings()
	fs.Usage = func() { PrintUsage(output, "sdsagent run [flags]", settings) }
	vals := register(fs, settings)
	if err := fs.Parse(args); err != nil {
		return Agent{}, err
	}
	if fs.NArg() > 0 {
		return Agent{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	r := resolver{fs: fs, vals: vals, getenv: getenv, settings: settings}
	a := Agent{
		CAAddr:         r.str("ca-addr"),
		CARootCert:     r.str("ca-root-cert"),
		CAPlaintext:    r.boolean("ca-plaintext"),
		CAServerName:   r.str("ca-server-name"),
		CATimeout:      r.duration("ca-timeout"),
		TokenFile:      r.str("token-file"),
		ClusterID:      r.str("cluster-id"),
		TrustDomain:    r.str("trust-domain"),
		Namespace:      r.str("namespace"),
		ServiceAccount: r.str("service-account"),
		Socket:         r.str("socket"),
		SocketMode:     r.mode("socket-mode"),
		HTTPAddr:       r.str("http-addr"),
		ReleaseMemory:  r.boolean("release-startup-memory"),
		SecretTTL:      r.duration("secret-ttl"),
		GraceRatio:     r.float("grace-ratio"),
		GraceJitter:    r.float("grace-jitter"),
		MountedCerts:   r.mountedCerts("file-mounted-certs"),
		CertDir:        r.str("cert-dir"),
		OutputDir:      r.str("output-dir"),
		FileResync:     r.duration("file-resync"),
		Log:            Log{Level: r.str("log-level"), Format: r.str("log-format")},
	}
	// Trust: extra anchors, the overlap of a replaced root, SPIFFE bundles.
	a.TrustAnchors = r.str("trust-anchors")
	a.RootOverlap = r.optionalDuration("root-overlap")
	a.SPIFFEValidator = r.boolean("spiffe-validator")
	a.TrustBundles = r.trustBundles("trust-bundle", a.TrustDomain)
	a.CRLFile = r.str("crl-file")
	a.KeyType = r.keyType()
	// Who may connect to the socket, besides its file mode.
	a.AllowedUIDs = r.ids("allowed-uids", "uid")
	a.AllowedGIDs = r.ids("allowed-gids", "gid")
	a.CAProvider, a.CFSSL = r.cfssl()
	a.Limits = r.limits()
	if err := r.err(); err != nil {
		return Agent{}, err
	}
	if err := a.checkCFSSL(); err != nil {
		return Agent{}, err
	}
	if a.CAAddr == "" {
		return Agent{}, fmt.Errorf("--ca-addr (CA_ADDR) is required")
	}
	if !a.CAPlaintext && a.CARootCert == "" {
		return Agent{}, fmt.Errorf("--ca-root-cert is required unless --ca-plaintext is set")
	}
	if a.SecretTTL <= 0 {
		return Agent{}, fmt.Errorf("--secret-ttl (SECRET_TTL) must be positive, got %s", a.SecretTTL)
	}
	if !(a.GraceRatio > 0 && a.GraceRatio < 1) { // also refuses NaN
		return Agent{}, fmt.Errorf("--grace-ratio (SECRET_GRACE_PERIOD_RATIO) must be between 0 and 1, got %v", a.GraceRatio)
	}
	if !(a.GraceJitter >= 0 && a.GraceRatio+a.GraceJitter < 1) {
		return Agent{}, fmt.Errorf("--grace-jitter (SECRET_GRACE_PERIOD_RATIO_JITTER) must be >= 0 and grace ratio + jitter below 1, got %v", a.GraceJitter)
	}
	if a.MountedCerts != MountedOff && a.CertDir == "" {
		return Agent{}, fmt.Errorf("--cert-dir (SDSAGENT_CERT_DIR) must not be empty unless --file-mounted-certs is false")
	}
	if a.FileResync <= 0 {
		return Agent{}, fmt.Errorf("--file-resync (SDSAGENT_FILE_RESYNC) must be positive, got %s", a.FileResync)
	}
	if a.RootOverlap < 0 {
		return Agent{}, fmt.Errorf("--root-overlap (SDSAGENT_ROOT_OVERLAP) must not be negative, got %s", a.RootOverlap)
	}
	if err := a.Log.validate(); err != nil {
		return Agent{}, err
	}
	return a, nil
}

func (l Log) validate() error {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level must be debug, info, warn or error, got %q", l.Level)
	}
	switch l.Format {
	case "json", "console":
	default:
		return fmt.Errorf("--log-format must be json or console, got %q", l.Format)
	}
	return nil
}
