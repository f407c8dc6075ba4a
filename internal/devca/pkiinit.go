package devca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/atomicfile"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/pki"
)

const (
	// defaultOfflineRootCommonName is the subject CN of a root made by InitRoot.
	defaultOfflineRootCommonName = "sdsagent root CA"
	// defaultIntermediateCommonName is the subject CN of an intermediate
	// made by InitIntermediate; its O is the trust domain.
	defaultIntermediateCommonName = "sdsagent intermediate CA"
	// defaultOfflineRootTTL is ten years: an offline root outlives many
	// intermediates and is costly to replace.
	defaultOfflineRootTTL = 87600 * time.Hour
	// defaultIntermediateTTL is a year, so a leaked mesh CA key is not good
	// for long and re-issuing it stays a practised routine.
	defaultIntermediateTTL = 8760 * time.Hour
)

// RootConfig configures InitRoot. Only Dir is required.
type RootConfig struct {
	// Dir receives root-cert.pem and root-key.pem; it is created with mode
	// 0700 if missing. Keep it offline.
	Dir string
	// CommonName is the root's subject CN; default "sdsagent root CA".
	CommonName string
	// Organization is the root's subject O; none by default.
	Organization string
	// TTL is the root's lifetime; default 87600h (ten years).
	TTL time.Duration
	// KeyType is the root key's algorithm; default ECDSA P-256.
	KeyType pki.KeyType
	// Clock tells the time the validity starts from; default clock.Real().
	Clock clock.Clock
	// Logger receives one line about what was written; default zap.NewNop().
	Logger *zap.Logger
}

// IntermediateConfig configures InitIntermediate. RootDir, Dir and
// TrustDomain are required.
type IntermediateConfig struct {
	// RootDir holds root-cert.pem and root-key.pem, as InitRoot writes
	// them (the key may also be PKCS#1 or SEC 1).
	RootDir string
	// Dir receives Istio's plugged-in CA files: ca-cert.pem, ca-key.pem,
	// root-cert.pem and cert-chain.pem. It is created with mode 0700 if
	// missing and must not be RootDir.
	Dir string
	// TrustDomain is the mesh's SPIFFE trust domain: the intermediate's
	// subject O and, unless NoNameConstraint, the only URI domain it may
	// sign for.
	TrustDomain string
	// CommonName is the intermediate's subject CN; default
	// "sdsagent intermediate CA".
	CommonName string
	// TTL is the intermediate's lifetime; default 8760h (a year). It is
	// cut short where the root expires first.
	TTL time.Duration
	// KeyType is the intermediate key's algorithm; default ECDSA P-256.
	KeyType pki.KeyType
	// NoNameConstraint leaves out the name constraint that otherwise
	// confines the intermediate to SPIFFE IDs in TrustDomain.
	NoNameConstraint bool
	// Clock tells the time the validity starts from; default clock.Real().
	Clock clock.Clock
	// Logger receives what was written; default zap.NewNop().
	Logger *zap.Logger
}

// InitRoot creates a self-signed root CA for an offline PKI whose
// intermediates (see InitIntermediate) sign for one mesh each. It writes
// Dir/root-cert.pem and Dir/root-key.pem (PKCS#8, mode 0600), refusing to
// overwrite either. The root may sign CRLs and CA certificates, one level
// deep (path length 1).
func InitRoot(cfg RootConfig) error {
	if err := initRoot(cfg); err != nil {
		return fmt.Errorf("devca: init root: %w", err)
	}
	return nil
}

func initRoot(cfg RootConfig) error {
	if cfg.Dir == "" {
		return errors.New("dir is required")
	}
	if cfg.CommonName == "" {
		cfg.CommonName = defaultOfflineRootCommonName
	}
	ttl, err := ttlOrDefault(cfg.TTL, defaultOfflineRootTTL)
	if err != nil {
		return err
	}
	kt, err := keyTypeOrDefault(cfg.KeyType)
	if err != nil {
		return err
	}
	now, log := nowAndLog(cfg.Clock, cfg.Logger)
	if err := refuseExisting(cfg.Dir, rootCertFile, rootKeyFile); err != nil {
		return err
	}
	key, err := pki.GenerateKey(kt)
	if err != nil {
		return err
	}

	subject := pkix.Name{CommonName: cfg.CommonName}
	if cfg.Organization != "" {
		subject.Organization = []string{cfg.Organization}
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Intermediates, which sign workloads directly: no deeper.
		MaxPathLen: 1,
		// SubjectKeyId is derived from the key by x509.CreateCertificate.
	}
	root, err := createCert(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create root: %w", err)
	}
	keyPEM, err := pki.EncodePrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNewFiles(cfg.Dir, []newFile{
		// The key first, so the certificate only exists with its key.
		{name: rootKeyFile, data: keyPEM, perm: 0o600},
		{name: rootCertFile, data: encodeCertPEM(root.Raw), perm: 0o644},
	}); err != nil {
		return err
	}
	log.Info("root created",
		zap.String("root_cert", filepath.Join(cfg.Dir, rootCertFile)),
		zap.String("root_key", filepath.Join(cfg.Dir, rootKeyFile)),
		zap.String("subject", root.Subject.String()),
		zap.String("serial", root.SerialNumber.Text(16)),
		zap.Time("not_after", root.NotAfter),
		zap.String("key_type", string(kt)))
	return nil
}

// InitIntermediate creates an intermediate CA for one mesh, signed by the
// root in RootDir, and writes it in Istio's plugged-in layout into Dir:
// ca-cert.pem, ca-key.pem (PKCS#8, mode 0600), root-cert.pem (a copy of the
// root) and cert-chain.pem (ca-cert.pem followed by the root). `sdsagent
// ca --dir Dir` and istiod's cacerts secret both take these files. It
// refuses to overwrite any of them.
//
// The intermediate may sign workload certificates and CRLs but no further
// CAs (path length 0), and carries key identifiers linking it to the root.
// Unless NoNameConstraint, a critical name constraint permits only URIs
// whose host is exactly TrustDomain (subdomains are excluded explicitly,
// since Go would otherwise accept them), so that its key cannot mint an
// identity in another trust domain that Go, OpenSSL or BoringSSL accept.
func InitIntermediate(cfg IntermediateConfig) error {
	if err := initIntermediate(cfg); err != nil {
		return fmt.Errorf("devca: init intermediate: %w", err)
	}
	return nil
}

func initIntermediate(cfg IntermediateConfig) error {
	switch {
	case cfg.RootDir == "":
		return errors.New("root dir is required")
	case cfg.Dir == "":
		return errors.New("dir is required")
	case cfg.TrustDomain == "":
		return errors.New("trust domain is required")
	}
	if err := pki.CheckTrustDomain(cfg.TrustDomain); err != nil {
		return err
	}
	if same, err := sameDir(cfg.RootDir, cfg.Dir); err != nil {
		return err
	} else if same {
		return fmt.Errorf("dir %s is the root dir: keep the root key apart from the mesh CA's files", cfg.Dir)
	}
	if cfg.CommonName == "" {
		cfg.CommonName = defaultIntermediateCommonName
	}
	ttl, err := ttlOrDefault(cfg.TTL, defaultIntermediateTTL)
	if err != nil {
		return err
	}
	kt, err := keyTypeOrDefault(cfg.KeyType)
	if err != nil {
		return err
	}
	now, log := nowAndLog(cfg.Clock, cfg.Logger)
	root, rootKey, err := loadOfflineRoot(cfg.RootDir, now)
	if err != nil {
		return err
	}
	if err := refuseExisting(cfg.Dir, pluggedFiles...); err != nil {
		return err
	}
	key, err := pki.GenerateKey(kt)
	if err != nil {
		return err
	}

	serial, err := newSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cfg.CommonName, Organization: []string{cfg.TrustDomain}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Workload certificates only, no CA below it.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		// SubjectKeyId is derived from the key and AuthorityKeyId copied
		// from the root's SubjectKeyId by x509.CreateCertificate.
	}
	if !cfg.NoNameConstraint {
		// Go's verifier lets "td" match subdomains too; OpenSSL and
		// BoringSSL match it exactly and ".td" as subdomains only. With
		// both, all three accept exactly spiffe://td/... and nothing else.
		tmpl.PermittedURIDomains = []string{cfg.TrustDomain}
		tmpl.ExcludedURIDomains = []string{"." + cfg.TrustDomain}
		// Go's name for "the name constraints extension is critical".
		tmpl.PermittedDNSDomainsCritical = true
	}
	if tmpl.NotBefore.Before(root.NotBefore) {
		tmpl.NotBefore = root.NotBefore
	}
	if tmpl.NotAfter.After(root.NotAfter) {
		log.Warn("intermediate validity cut short at the root's expiry",
			zap.Time("requested_not_after", tmpl.NotAfter), zap.Time("root_not_after", root.NotAfter))
		tmpl.NotAfter = root.NotAfter
	}
	ca, err := createCert(tmpl, root, key.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("create intermediate: %w", err)
	}
	// Check the result the way `sdsagent ca` will before writing anything.
	sg, err := newSigner(key, []*x509.Certificate{ca, root})
	if err != nil {
		return fmt.Errorf("check intermediate: %w", err)
	}
	if err := sg.checkIssuable(cfg.TrustDomain, now); err != nil {
		return fmt.Errorf("check intermediate: %w", err)
	}

	keyPEM, err := pki.EncodePrivateKey(key)
	if err != nil {
		return err
	}
	caPEM := encodeCertPEM(ca.Raw)
	rootPEM := encodeCertPEM(root.Raw)
	if err := writeNewFiles(cfg.Dir, []newFile{
		// The key first and the chain last: `sdsagent ca` reports a
		// partial set by name should a write fail half way.
		{name: caKeyFile, data: keyPEM, perm: 0o600},
		{name: caCertFile, data: caPEM, perm: 0o644},
		{name: rootCertFile, data: rootPEM, perm: 0o644},
		{name: certChainFile, data: append(append([]byte(nil), caPEM...), rootPEM...), perm: 0o644},
	}); err != nil {
		return err
	}
	log.Info("intermediate created",
		zap.String("dir", cfg.Dir),
		zap.String("trust_domain", cfg.TrustDomain),
		zap.String("subject", ca.Subject.String()),
		zap.String("serial", ca.SerialNumber.Text(16)),
		zap.Time("not_after", ca.NotAfter),
		zap.Bool("name_constraint", !cfg.NoNameConstraint),
		zap.String("root_subject", root.Subject.String()),
		zap.String("key_type", string(kt)))
	return nil
}

// loadOfflineRoot reads and checks rootDir/root-cert.pem and
// rootDir/root-key.pem. Errors name the file.
func loadOfflineRoot(rootDir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(rootDir, rootCertFile)
	keyPath := filepath.Join(rootDir, rootKeyFile)
	data, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("root certificate: %w", err)
	}
	root, err := pki.ParseCertificate(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	data, err = os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("root key: %w", err)
	}
	key, err := pki.ParsePrivateKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if err := keyMatchesCert(key, root); err != nil {
		return nil, nil, fmt.Errorf("%s: %w in %s", keyPath, err, certPath)
	}
	if err := checkSigningCA(root, now); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if root.MaxPathLenZero {
		return nil, nil, fmt.Errorf("%s: root %s has path length 0 and may not sign intermediate CAs", certPath, certName(root))
	}
	return root, key, nil
}

// newFile is a file for writeNewFiles.
type newFile struct {
	name string
	data []byte
	perm os.FileMode
}

// writeNewFiles creates dir (mode 0700) if needed and writes files into
// it in order, none of which may exist yet. If a write fails, the files
// written before it are removed again.
func writeNewFiles(dir string, files []newFile) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create dir: %w", err)
	}
	var written []string
	for _, f := range files {
		if err := atomicfile.WriteNew(dir, f.name, f.data, f.perm); err != nil {
			errs := []error{err}
			for _, name := range written {
				if rmErr := os.Remove(filepath.Join(dir, name)); rmErr != nil {
					errs = append(errs, fmt.Errorf("remove partly written set: %w", rmErr))
				}
			}
			return errors.Join(errs...)
		}
		written = append(written, f.name)
	}
	return nil
}

// refuseExisting returns an error naming every one of names that exists
// in dir; a missing dir holds none.
func refuseExisting(dir string, names ...string) error {
	present, _, err := presence(dir, names...)
	if err != nil {
		return err
	}
	if len(present) > 0 {
		return fmt.Errorf("%s already in %s: refusing to overwrite; remove or move them first, or choose another dir",
			strings.Join(present, ", "), dir)
	}
	return nil
}

// sameDir reports whether a and b name the same directory, following
// symbolic links where they exist.
func sameDir(a, b string) (bool, error) {
	ia, errA := os.Stat(a)
	ib, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(ia, ib), nil
	}
	absA, err := filepath.Abs(a)
	if err != nil {
		return false, err
	}
	absB, err := filepath.Abs(b)
	if err != nil {
		return false, err
	}
	return absA == absB, nil
}

func ttlOrDefault(ttl, def time.Duration) (time.Duration, error) {
	switch {
	case ttl < 0:
		return 0, fmt.Errorf("TTL %s is negative", ttl)
	case ttl == 0:
		return def, nil
	}
	return ttl, nil
}

// keyTypeOrDefault checks kt, ECDSA P-256 when empty.
func keyTypeOrDefault(kt pki.KeyType) (pki.KeyType, error) {
	if kt == "" {
		return pki.ECDSAP256, nil
	}
	return pki.ParseKeyType(string(kt))
}

func nowAndLog(c clock.Clock, log *zap.Logger) (time.Time, *zap.Logger) {
	if c == nil {
		c = clock.Real()
	}
	if log == nil {
		log = zap.NewNop()
	}
	return c.Now(), log.Named("devca")
}

// createCert signs tmpl with parent's key and parses the result.
func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
