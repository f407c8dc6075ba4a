package config

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// CAInitRoot is the configuration of `sdsagent ca init-root`.
type CAInitRoot struct {
	Dir          string
	CommonName   string
	Organization string
	TTL          time.Duration
	KeyType      pki.KeyType
	Log          Log
}

// CAInitIntermediate is the configuration of `sdsagent ca init-intermediate`.
type CAInitIntermediate struct {
	RootDir     string
	Dir         string
	TrustDomain string
	CommonName  string
	TTL         time.Duration
	KeyType     pki.KeyType
	// NoNameConstraint is --name-constraint=false: the intermediate may
	// sign outside its trust domain (devca.IntermediateConfig has the same
	// field, whose zero value is the safe one).
	NoNameConstraint bool
	Log              Log
}

// CAInitRootSettings lists the settings of `sdsagent ca init-root`. They
// are one-off choices made at a terminal, so only logging reads the
// environment.
func CAInitRootSettings() []Setting {
	return []Setting{
		{"dir", "", "", "directory to write root-cert.pem and root-key.pem (0600) into; existing files are never overwritten; keep it offline (required)"},
		{"common-name", "", "sdsagent root CA", "subject common name (CN) of the root"},
		{"organization", "", "", "subject organization (O) of the root"},
		{"ttl", "", "87600h", "lifetime of the root"},
		{"key-type", "", "ecdsa-p256", "root key: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"},
		{"log-level", "SDSAGENT_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"log-format", "SDSAGENT_LOG_FORMAT", "console", "json or console"},
	}
}

// CAInitIntermediateSettings lists the settings of `sdsagent ca
// init-intermediate`.
func CAInitIntermediateSettings() []Setting {
	return []Setting{
		{"root-dir", "", "", "directory holding root-cert.pem and root-key.pem, as init-root writes them (required)"},
		{"dir", "", "", "directory to write Istio's ca-cert.pem, ca-key.pem (0600), root-cert.pem and cert-chain.pem into, for `sdsagent ca --dir` or istiod's cacerts secret; existing files are never overwritten (required)"},
		{"trust-domain", "", "", "trust domain of the mesh: the intermediate's organization (O) and the only URI domain it may sign for (required)"},
		{"common-name", "", "sdsagent intermediate CA", "subject common name (CN) of the intermediate"},
		{"ttl", "", "8760h", "lifetime of the intermediate, cut short where the root expires first"},
		{"key-type", "", "ecdsa-p256", "intermediate key: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"},
		{"name-constraint", "", "true", "add a critical name constraint permitting only spiffe://<trust-domain>/... URIs"},
		{"log-level", "SDSAGENT_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"log-format", "SDSAGENT_LOG_FORMAT", "console", "json or console"},
	}
}

// ParseCAInitRoot parses the arguments of `sdsagent ca init-root`.
func ParseCAInitRoot(args []string, getenv func(string) string, output io.Writer) (CAInitRoot, error) {
	settings := CAInitRootSettings()
	r, err := parseSettings("sdsagent ca init-root", "sdsagent ca init-root --dir ROOTDIR [flags]", settings, args, getenv, output)
	if err != nil {
		return CAInitRoot{}, err
	}
	c := CAInitRoot{
		Dir:          r.str("dir"),
		CommonName:   r.str("common-name"),
		Organization: r.str("organization"),
		TTL:          r.duration("ttl"),
		KeyType:      r.plainKeyType("key-type"),
		Log:          Log{Level: r.str("log-level"), Format: r.str("log-format")},
	}
	if err := r.err(); err != nil {
		return CAInitRoot{}, err
	}
	if c.Dir == "" {
		return CAInitRoot{}, fmt.Errorf("--dir is required: root-cert.pem and root-key.pem are written there")
	}
	if c.TTL <= 0 {
		return CAInitRoot{}, fmt.Errorf("--ttl must be positive, got %s", c.TTL)
	}
	if err := c.Log.validate(); err != nil {
		return CAInitRoot{}, err
	}
	return c, nil
}

// ParseCAInitIntermediate parses the arguments of `sdsagent ca
// init-intermediate`.
func ParseCAInitIntermediate(args []string, getenv func(string) string, output io.Writer) (CAInitIntermediate, error) {
	settings := CAInitIntermediateSettings()
	r, err := parseSettings("sdsagent ca init-intermediate",
		"sdsagent ca init-intermediate --root-dir ROOTDIR --dir MESHDIR --trust-domain TD [flags]", settings, args, getenv, output)
	if err != nil {
		return CAInitIntermediate{}, err
	}
	c := CAInitIntermediate{
		RootDir:          r.str("root-dir"),
		Dir:              r.str("dir"),
		TrustDomain:      r.str("trust-domain"),
		CommonName:       r.str("common-name"),
		TTL:              r.duration("ttl"),
		KeyType:          r.plainKeyType("key-type"),
		NoNameConstraint: !r.boolean("name-constraint"),
		Log:              Log{Level: r.str("log-level"), Format: r.str("log-format")},
	}
	if err := r.err(); err != nil {
		return CAInitIntermediate{}, err
	}
	switch {
	case c.RootDir == "":
		return CAInitIntermediate{}, fmt.Errorf("--root-dir is required: the root signs the intermediate")
	case c.Dir == "":
		return CAInitIntermediate{}, fmt.Errorf("--dir is required: the mesh CA's files are written there")
	case c.TrustDomain == "":
		return CAInitIntermediate{}, fmt.Errorf("--trust-domain is required: the intermediate is made for one mesh")
	}
	if c.TTL <= 0 {
		return CAInitIntermediate{}, fmt.Errorf("--ttl must be positive, got %s", c.TTL)
	}
	if err := c.Log.validate(); err != nil {
		return CAInitIntermediate{}, err
	}
	return c, nil
}

// parseSettings parses args against settings and returns the resolver
// that reads them.
func parseSettings(name, usage string, settings []Setting, args []string, getenv func(string) string, output io.Writer) (*resolver, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() { PrintUsage(output, usage, settings) }
	vals := register(fs, settings)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return &resolver{fs: fs, vals: vals, getenv: getenv, settings: settings}, nil
}

// plainKeyType parses a key type setting without the agent's fallback to
// Istio's workload key variables.
func (r *resolver) plainKeyType(name string) pki.KeyType {
	v, from := r.source(name)
	kt, err := pki.ParseKeyType(v)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", from, err))
	}
	return kt
}
