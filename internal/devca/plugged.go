package devca

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/atomicfile"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// pluggedFiles are Istio's plugged-in CA files, the keys of its cacerts
// secret: the intermediate CA's certificate and key, the root, and the
// chain from the intermediate up to (optionally) the root.
var pluggedFiles = []string{caCertFile, caKeyFile, rootCertFile, certChainFile}

// loadPluggedState loads an intermediate CA from Istio's plugged-in CA
// files in dir and checks that they belong together: the key is
// ca-cert.pem's, ca-cert.pem may sign certificates and is valid now,
// cert-chain.pem starts with ca-cert.pem and verifies to a root in
// root-cert.pem, and a workload certificate in trustDomain issued with
// them verifies. Each error names the file it is about. The token is
// created if missing; nothing else is ever written.
func loadPluggedState(dir, trustDomain string, now time.Time, log *zap.Logger) (*state, error) {
	present, missing, err := presence(dir, pluggedFiles...)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("incomplete plugged-in CA: missing %s (found %s); an intermediate CA needs all of %s, as in Istio's cacerts secret",
			strings.Join(missing, ", "), strings.Join(present, ", "), strings.Join(pluggedFiles, ", "))
	}

	rootPEM, err := os.ReadFile(filepath.Join(dir, rootCertFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}
	roots, err := pki.ParseCertificates(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rootCertFile, err)
	}

	caCertPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caCertFile, err)
	}
	caCert, err := pki.ParseCertificate(caCertPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caCertFile, err)
	}

	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caKeyFile, err)
	}
	// Istio's tooling writes PKCS#1 and SEC 1 keys as well as PKCS#8.
	key, err := pki.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caKeyFile, err)
	}
	if err := keyMatchesCert(key, caCert); err != nil {
		return nil, fmt.Errorf("%s: %w in %s", caKeyFile, err, caCertFile)
	}
	if err := checkSigningCA(caCert, now); err != nil {
		return nil, fmt.Errorf("%s: %w", caCertFile, err)
	}

	chainPEM, err := os.ReadFile(filepath.Join(dir, certChainFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certChainFile, err)
	}
	chain, err := pki.ParseCertificates(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certChainFile, err)
	}
	if !chain[0].Equal(caCert) {
		return nil, fmt.Errorf("%s: starts with %s, not with the certificate in %s (%s); it must be %s followed by the intermediates above it",
			certChainFile, certName(chain[0]), caCertFile, certName(caCert), caCertFile)
	}
	root, mids, err := chainRoot(chain, roots)
	if err != nil {
		return nil, err
	}
	if now.Before(root.NotBefore) || now.After(root.NotAfter) {
		return nil, fmt.Errorf("%s: root %s: %w", rootCertFile, certName(root),
			&notValidError{notBefore: root.NotBefore, notAfter: root.NotAfter, now: now})
	}
	full := append([]*x509.Certificate{caCert}, mids...)
	if !root.Equal(caCert) {
		full = append(full, root)
	}
	sg, err := newSigner(key, full)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certChainFile, err)
	}
	// newSigner checked each signature; x509 also checks validity, path
	// lengths and name constraints along the chain.
	if err := pki.VerifyChain(caCert, mids, []*x509.Certificate{root}, now); err != nil {
		return nil, fmt.Errorf("%s does not verify to %s: %w", certChainFile, rootCertFile, err)
	}
	if err := sg.checkIssuable(trustDomain, now); err != nil {
		if uris := caCert.PermittedURIDomains; len(uris) > 0 {
			err = fmt.Errorf("%w (its name constraints permit URIs in %q only: is the trust domain right?)", err, uris)
		}
		return nil, fmt.Errorf("%s: %w", caCertFile, err)
	}

	token, err := loadOrCreateToken(dir, log)
	if err != nil {
		return nil, err
	}
	warnSecretModes(dir, log)
	log.Info("state loaded",
		zap.String("dir", dir),
		zap.String("mode", string(ModeIntermediate)),
		zap.String("ca_subject", caCert.Subject.String()),
		zap.String("ca_serial", caCert.SerialNumber.Text(16)),
		zap.Time("ca_not_after", caCert.NotAfter),
		zap.Int("chain_length", len(full)),
		zap.String("root_subject", root.Subject.String()),
		zap.String("root_serial", root.SerialNumber.Text(16)),
		zap.Time("root_not_after", root.NotAfter),
		zap.Strings("permitted_uri_domains", caCert.PermittedURIDomains))
	return &state{signer: sg, rootPEM: rootPEM, token: token}, nil
}

// checkSigningCA refuses a certificate that may not sign certificates or
// is not valid at now. As RFC 5280 says, a certificate without a key usage
// extension may be used for any purpose, cert sign included.
func checkSigningCA(c *x509.Certificate, now time.Time) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("certificate %s is not a CA (basic constraints CA:TRUE missing)", certName(c))
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate %s lacks the cert sign key usage", certName(c))
	}
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return &notValidError{notBefore: c.NotBefore, notAfter: c.NotAfter, now: now}
	}
	return nil
}

// chainRoot finds the root of chain (ca-cert.pem first, as in
// cert-chain.pem) among roots, and returns it with the intermediates
// between chain[0] and it. chain may end with the root or stop below it;
// chain[0] may itself be the root.
func chainRoot(chain, roots []*x509.Certificate) (*x509.Certificate, []*x509.Certificate, error) {
	top := chain[len(chain)-1]
	if pki.IsSelfSigned(top) {
		for _, r := range roots {
			if r.Equal(top) {
				return r, chain[1:max(len(chain)-1, 1)], nil
			}
		}
		return nil, nil, fmt.Errorf("%s ends in root %s, which is not in %s", certChainFile, certName(top), rootCertFile)
	}
	for _, r := range roots {
		if bytes.Equal(top.RawIssuer, r.RawSubject) && top.CheckSignatureFrom(r) == nil {
			return r, chain[1:], nil
		}
	}
	return nil, nil, fmt.Errorf("%s does not verify to %s: %s is not signed by a certificate in %s",
		certChainFile, rootCertFile, certName(top), rootCertFile)
}

// loadOrCreateToken reads dir/token, creating it first if it does not
// exist: Istio's plugged-in files carry no token.
func loadOrCreateToken(dir string, log *zap.Logger) ([]byte, error) {
	_, missing, err := presence(dir, tokenFile)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		token, err := newToken()
		if err != nil {
			return nil, err
		}
		// Another process may have created it since: keep theirs.
		switch err := atomicfile.WriteNew(dir, tokenFile, token, 0o600); {
		case err == nil:
			log.Info("token created", zap.String("path", filepath.Join(dir, tokenFile)))
		case errors.Is(err, fs.ErrExist):
		default:
			return nil, err
		}
	}
	return loadToken(dir)
}
