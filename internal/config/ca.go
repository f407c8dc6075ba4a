// The settings of `sdsagent ca`.

package config

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sdsagent/sdsagent/internal/devca"
)

// CA is the configuration of `sdsagent ca`.
type CA struct {
	Listen      string
	Dir         string
	TrustDomain string
	MaxTTL      time.Duration
	ServerNames []string
	CRLValidity time.Duration
	Log         Log
	// JWKSFile, when set, makes the CA accept Kubernetes service-account
	// tokens signed by its keys instead of the development token.
	JWKSFile    string
	JWTIssuer   string
	JWTAudience string
	// MaxPendingCSRs bounds the CSRs the CA handles at once; 0: no bound.
	MaxPendingCSRs int
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
		{"crl-validity", "SDSAGENT_CA_CRL_VALIDITY", "24h", "lifetime of the CRL published as DIR/crl.pem (NextUpdate - ThisUpdate); re-signed at half of it"},
		{"max-pending-csrs", "SDSAGENT_CA_MAX_PENDING_CSRS", strconv.Itoa(devca.DefaultMaxPendingCSRs), "CSRs handled at once; one more is answered ResourceExhausted with a grpc-retry-pushback-ms trailer giving it the next free slot (0: no bound)"},
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
		CRLValidity: r.duration("crl-validity"),
		Log:         Log{Level: r.str("log-level"), Format: r.str("log-format")},
		JWKSFile:    r.str("jwks"),
		JWTIssuer:   r.str("jwt-issuer"),
		JWTAudience: r.str("jwt-audience"),
	}
	c.MaxPendingCSRs = r.nonNegativeInt("max-pending-csrs")
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
	if c.CRLValidity <= 0 {
		return CA{}, fmt.Errorf("--crl-validity must be positive, got %s", c.CRLValidity)
	}
	if err := c.Log.validate(); err != nil {
		return CA{}, err
	}
	return c, nil
}
