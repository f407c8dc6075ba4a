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
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
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
		{"ca-addr", "CA_ADDR", "istiod.istio-system.svc:15012", "address of the Istio CA (istiod, istio-csr or `sdsagent ca`)"},
		{"ca-root-cert", "SDSAGENT_CA_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem", "PEM roots that verify the CA's TLS certificate (re-read on each connection)"},
		{"ca-plaintext", "SDSAGENT_CA_PLAINTEXT", "false", "talk to the CA without TLS (never in production)"},
		{"ca-server-name", "SDSAGENT_CA_SERVER_NAME", "", "name expected in the CA's certificate (default: host of --ca-addr)"},
		{"ca-timeout", "SDSAGENT_CA_TIMEOUT", "10s", "deadline of each CSR call"},
		{"token-file", "SDSAGENT_TOKEN_FILE", "/var/run/secrets/tokens/istio-token", "bearer token sent to the CA, re-read on every call"},
		{"cluster-id", "ISTIO_META_CLUSTER_ID", "Kubernetes", "sent to the CA as the ClusterID header"},
		{"trust-domain", "TRUST_DOMAIN", "cluster.local", "SPIFFE trust domain of the workload"},
		{"namespace", "POD_NAMESPACE", "default", "Kubernetes namespace of the workload"},
		{"service-account", "SERVICE_ACCOUNT", "default", "Kubernetes service account of the workload"},
		{"socket", "SDSAGENT_SOCKET", "/var/run/secrets/workload-spiffe-uds/socket", "Unix socket Envoy reads SDS from"},
		{"socket-mode", "SDSAGENT_SOCKET_MODE", "0660", "permissions of the socket: whoever can connect gets the private key"},
		{"allowed-uids", "SDSAGENT_ALLOWED_UIDS", "", "comma-separated uids that may connect to the socket (checked with SO_PEERCRED before any SDS byte; with --allowed-gids, a caller matching either list may connect; empty: no check)"},
		{"allowed-gids", "SDSAGENT_ALLOWED_GIDS", "", "comma-separated gids that may connect to the socket, matched against the caller's primary group (empty: no check)"},
		{"http-addr", "SDSAGENT_HTTP_ADDR", "127.0.0.1:15020", "health, readiness, metrics and debug HTTP endpoint (empty disables)"},
		{"release-startup-memory", "SDSAGENT_RELEASE_STARTUP_MEMORY", "true", "once the first certificate is served, let the kernel reclaim binary pages only startup used (Linux, lowers resident memory)"},
		{"key-type", "SDSAGENT_KEY_TYPE", "ecdsa-p256", "workload key: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 (Istio's ECC_SIGNATURE_ALGORITHM, ECC_CURVE and WORKLOAD_RSA_KEY_SIZE are honoured when this is not set)"},
		{"secret-ttl", "SECRET_TTL", "24h", "certificate lifetime requested from the CA"},
		{"grace-ratio", "SECRET_GRACE_PERIOD_RATIO", "0.5", "renew when this fraction of the lifetime remains (Istio's meaning)"},
		{"grace-jitter", "SECRET_GRACE_PERIOD_RATIO_JITTER", "0.01", "up to this fraction of the lifetime is added at random to the grace period"},
		{"file-mounted-certs", "FILE_MOUNTED_CERTS", "auto", "serve default and ROOTCA from cert-chain.pem, key.pem and root-cert.pem in --cert-dir instead of calling a CA: true, false, or auto (when all three files exist at start)"},
		{"cert-dir", "SDSAGENT_CERT_DIR", "/etc/certs", "directory of the mounted workload certificate files"},
		{"output-dir", "OUTPUT_CERTS", "", "after each issuance or rotation, write cert-chain.pem, key.pem (0600) and root-cert.pem here for proxyless clients (empty disables)"},
		{"file-resync", "SDSAGENT_FILE_RESYNC", "30s", "re-read every watched certificate file this often, in case a file system event was lost"},
		{"trust-anchors", "SDSAGENT_TRUST_ANCHORS", "", "PEM file of extra roots ROOTCA carries after the CA's, e.g. the next root before a root rotation (watched; white space only means none)"},
		{"root-overlap", "SDSAGENT_ROOT_OVERLAP", "", "how long ROOTCA keeps a root after the CA's answers moved to another root (default: --secret-ttl, by when every peer certificate under the old root has expired)"},
		{"spiffe-validator", "SDSAGENT_SPIFFE_VALIDATOR", "false", "serve ROOTCA for Envoy's SPIFFE certificate validator (custom_validator_config, one trust bundle per trust domain) instead of trusted_ca; the name ALL always has that form"},
		{"trust-bundle", "SDSAGENT_TRUST_BUNDLES", "", "TD=PATH: PEM roots of the federated trust domain TD, served as its own bundle in the SPIFFE form (repeatable or comma-separated; watched)"},
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
	a.KeyType = r.keyType()
	// Who may connect to the socket, besides its file mode.
	a.AllowedUIDs = r.ids("allowed-uids", "uid")
	a.AllowedGIDs = r.ids("allowed-gids", "gid")
	a.Limits = r.limits()
	if err := r.err(); err != nil {
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
	if a.GraceRatio <= 0 || a.GraceRatio >= 1 {
		return Agent{}, fmt.Errorf("--grace-ratio (SECRET_GRACE_PERIOD_RATIO) must be between 0 and 1, got %v", a.GraceRatio)
	}
	if a.GraceJitter < 0 || a.GraceRatio+a.GraceJitter >= 1 {
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

// CA is the configuration of `sdsagent ca`.
type CA struct {
	Listen      string
	Dir         string
	TrustDomain string
	MaxTTL      time.Duration
	ServerNames []string
	Log         Log
	// JWKSFile, when set, makes the CA accept Kubernetes service-account
	// tokens signed by its keys instead of the development token.
	JWKSFile    string
	JWTIssuer   string
	JWTAudience string
}

// CASettings lists the settings of `sdsagent ca`.
func CASettings() []Setting {
	return []Setting{
		{"listen", "SDSAGENT_CA_LISTEN", "127.0.0.1:15012", "address the CA serves gRPC over TLS on"},
		{"dir", "SDSAGENT_CA_DIR", "", "state directory: with Istio's plugged-in files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) the CA signs as that intermediate; otherwise a self-signed root-cert.pem and ca-key.pem are created on first start; token is created if missing (required)"},
		{"trust-domain", "TRUST_DOMAIN", "cluster.local", "the only trust domain the CA signs"},
		{"max-ttl", "SDSAGENT_CA_MAX_TTL", "24h", "longest certificate lifetime the CA grants; longer requests are refused"},
		{"server-names", "SDSAGENT_CA_SERVER_NAMES", "", "extra comma-separated DNS names or IPs for the CA's serving certificate"},
		{"jwks", "SDSAGENT_CA_JWKS", "", "JWKS file of the keys that sign Kubernetes service-account tokens (kubectl get --raw /openid/v1/jwks; watched): callers then authenticate with such a token and get only their own service account's identity (empty: the development token, which gets any identity)"},
		{"jwt-issuer", "SDSAGENT_CA_JWT_ISSUER", "", "issuer (iss) the tokens must carry, e.g. https://kubernetes.default.svc.cluster.local (required with --jwks)"},
		{"jwt-audience", "SDSAGENT_CA_JWT_AUDIENCE", "istio-ca", "audience (aud) the tokens must carry"},
		{"log-level", "SDSAGENT_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"log-format", "SDSAGENT_LOG_FORMAT", "console", "json or console"},
	}
}

// ParseCA parses the arguments of `sdsagent ca`.
func ParseCA(args []string, getenv func(string) string, output io.Writer) (CA, error) {
	fs := flag.NewFlagSet("sdsagent ca", flag.ContinueOnError)
	fs.SetOutput(output)
	settings := CASettings()
	fs.Usage = func() { PrintUsage(output, "sdsagent ca --dir DIR [flags]", settings) }
	vals := register(fs, settings)
	if err := fs.Parse(args); err != nil {
		return CA{}, err
	}
	if fs.NArg() > 0 {
		return CA{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	r := resolver{fs: fs, vals: vals, getenv: getenv, settings: settings}
	c := CA{
		Listen:      r.str("listen"),
		Dir:         r.str("dir"),
		TrustDomain: r.str("trust-domain"),
		MaxTTL:      r.duration("max-ttl"),
		Log:         Log{Level: r.str("log-level"), Format: r.str("log-format")},
		JWKSFile:    r.str("jwks"),
		JWTIssuer:   r.str("jwt-issuer"),
		JWTAudience: r.str("jwt-audience"),
	}
	for _, n := range strings.Split(r.str("server-names"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			c.ServerNames = append(c.ServerNames, n)
		}
	}
	if err := r.err(); err != nil {
		return CA{}, err
	}
	if c.Dir == "" {
		return CA{}, fmt.Errorf("--dir is required: the CA keeps its root key and token there")
	}
	if c.MaxTTL <= 0 {
		return CA{}, fmt.Errorf("--max-ttl must be positive, got %s", c.MaxTTL)
	}
	if err := c.checkJWT(); err != nil {
		return CA{}, err
	}
	if err := c.Log.validate(); err != nil {
		return CA{}, err
	}
	return c, nil
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

// PrintUsage writes a usage line and a table of settings.
func PrintUsage(w io.Writer, usage string, settings []Setting) {
	fmt.Fprintf(w, "Usage: %s\n\n", usage)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tENV\tDEFAULT\tMEANING")
	for _, s := range settings {
		def := s.Default
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", s.Flag, s.Env, def, s.Usage)
	}
	tw.Flush()
}

// listFlags are the settings that may be given several times; their
// values are joined with commas, as their environment variable lists them.
func listFlags() []string { return []string{"trust-bundle"} }

// register defines a flag per setting that keeps the raw value; typed
// parsing happens in resolver so that flags and env share one parser.
// A setting whose default is true, false or auto is a boolean flag: given
// alone (--ca-plaintext) it means true; other values need "=".
func register(fs *flag.FlagSet, settings []Setting) map[string]*string {
	vals := make(map[string]*string, len(settings))
	for _, s := range settings {
		v := s.Default
		vals[s.Flag] = &v
		switch {
		case slices.Contains(listFlags(), s.Flag):
			fs.Var(&listString{p: &v}, s.Flag, s.Usage)
		case s.Default == "true" || s.Default == "false" || s.Default == string(MountedAuto):
			fs.Var(boolString{&v}, s.Flag, s.Usage)
		default:
			fs.StringVar(&v, s.Flag, s.Default, s.Usage)
		}
	}
	return vals
}

// boolString is a string flag.Value that may be given without a value.
type boolString struct{ p *string }

func (b boolString) String() string {
	if b.p == nil {
		return ""
	}
	return *b.p
}

func (b boolString) Set(v string) error {
	*b.p = v
	return nil
}

// IsBoolFlag lets the flag package accept the flag alone, as "true".
func (boolString) IsBoolFlag() bool { return true }

// listString is a string flag.Value that may be given several times:
// the values are joined with commas.
type listString struct {
	p   *string
	set bool
}

func (l *listString) String() string {
	if l == nil || l.p == nil {
		return ""
	}
	return *l.p
}

func (l *listString) Set(v string) error {
	if l.set {
		*l.p += "," + v
	} else {
		*l.p, l.set = v, true
	}
	return nil
}

// resolver picks flag, then env, then default for each setting and
// collects the first parse error.
type resolver struct {
	fs       *flag.FlagSet
	vals     map[string]*string
	getenv   func(string) string
	settings []Setting
	first    error
}

func (r *resolver) setting(name string) Setting {
	for _, s := range r.settings {
		if s.Flag == name {
			return s
		}
	}
	panic("config: unknown setting " + name) // a programming error, caught by tests
}

// source returns the raw value and where it came from.
func (r *resolver) source(name string) (string, string) {
	s := r.setting(name)
	set := false
	r.fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	if set {
		return *r.vals[name], "--" + name
	}
	if v, ok := r.lookupEnv(s.Env); ok {
		return v, s.Env
	}
	return s.Default, "default of --" + name
}

func (r *resolver) lookupEnv(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	v := r.getenv(name)
	return v, v != ""
}

func (r *resolver) str(name string) string {
	v, _ := r.source(name)
	return strings.TrimSpace(v)
}

func (r *resolver) fail(err error) {
	if r.first == nil {
		r.first = err
	}
}

func (r *resolver) err() error { return r.first }

func (r *resolver) boolean(name string) bool {
	v, from := r.source(name)
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not a boolean", from, v))
	}
	return b
}

func (r *resolver) duration(name string) time.Duration {
	v, from := r.source(name)
	d, err := parseDuration(strings.TrimSpace(v))
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not a duration (e.g. 24h, 90m)", from, v))
	}
	return d
}

// parseDuration accepts Go durations and, as Istio does for SECRET_TTL,
// plain seconds.
func parseDuration(v string) (time.Duration, error) {
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Duration(secs) * time.Second, nil
	}
	return time.ParseDuration(v)
}

// optionalDuration is duration, with an empty value meaning zero.
func (r *resolver) optionalDuration(name string) time.Duration {
	if v, _ := r.source(name); strings.TrimSpace(v) == "" {
		return 0
	}
	return r.duration(name)
}

// trustBundles parses a comma-separated list of TD=PATH: each trust
// domain valid, once, and not own, the agent's own.
func (r *resolver) trustBundles(name, own string) []TrustBundle {
	v, from := r.source(name)
	var out []TrustBundle
	seen := map[string]bool{}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		td, path, ok := strings.Cut(item, "=")
		td, path = strings.TrimSpace(td), strings.TrimSpace(path)
		switch {
		case !ok || td == "" || path == "":
			r.fail(fmt.Errorf("%s: %q is not TD=PATH, e.g. mesh-b.example=/etc/bundles/mesh-b.pem", from, item))
			return nil
		case td == own:
			r.fail(fmt.Errorf("%s: %q is this workload's own trust domain, whose roots come from the CA; add extra roots for it with --trust-anchors", from, td))
			return nil
		case seen[td]:
			r.fail(fmt.Errorf("%s: trust domain %q given twice", from, td))
			return nil
		}
		if err := pki.CheckTrustDomain(td); err != nil {
			r.fail(fmt.Errorf("%s: %w", from, err))
			return nil
		}
		seen[td] = true
		out = append(out, TrustBundle{TrustDomain: td, Path: path})
	}
	return out
}

func (r *resolver) float(name string) float64 {
	v, from := r.source(name)
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not a number", from, v))
	}
	return f
}

// mountedCerts accepts "auto" and anything strconv.ParseBool does.
func (r *resolver) mountedCerts(name string) MountedCerts {
	v, from := r.source(name)
	v = strings.TrimSpace(v)
	if strings.EqualFold(v, string(MountedAuto)) {
		return MountedAuto
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(fmt.Errorf("%s: %q is not true, false or auto", from, v))
		return MountedAuto
	}
	if b {
		return MountedOn
	}
	return MountedOff
}

func (r *resolver) mode(name string) os.FileMode {
	v, from := r.source(name)
	m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
	if err != nil || m > 0o777 {
		r.fail(fmt.Errorf("%s: %q is not an octal file mode such as 0660", from, v))
	}
	return os.FileMode(m)
}

// keyType resolves --key-type, then SDSAGENT_KEY_TYPE, then Istio's
// ECC_SIGNATURE_ALGORITHM / ECC_CURVE / WORKLOAD_RSA_KEY_SIZE, then the
// default.
func (r *resolver) keyType() pki.KeyType {
	v, from := r.source("key-type")
	if strings.HasPrefix(from, "default") {
		alg, _ := r.lookupEnv("ECC_SIGNATURE_ALGORITHM")
		curve, _ := r.lookupEnv("ECC_CURVE")
		bits, haveBits := r.lookupEnv("WORKLOAD_RSA_KEY_SIZE")
		if alg != "" || haveBits {
			n := 0
			if haveBits {
				var err error
				if n, err = strconv.Atoi(strings.TrimSpace(bits)); err != nil {
					r.fail(fmt.Errorf("WORKLOAD_RSA_KEY_SIZE: %q is not a number", bits))
					return ""
				}
			}
			kt, err := pki.KeyTypeFromIstio(alg, curve, n)
			if err != nil {
				r.fail(err)
			}
			return kt
		}
	}
	kt, err := pki.ParseKeyType(v)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", from, err))
	}
	return kt
}
