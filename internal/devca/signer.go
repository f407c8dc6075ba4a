package devca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// notValidError reports that the CA chain (the signing certificate or one
// above it) is not valid at the time of a request, so nothing it signed
// would verify.
type notValidError struct {
	notBefore, notAfter, now time.Time
}

func (e *notValidError) Error() string {
	return fmt.Sprintf("ca certificate is not valid now (%s): valid from %s to %s",
		e.now.UTC().Format(time.RFC3339), e.notBefore.UTC().Format(time.RFC3339), e.notAfter.UTC().Format(time.RFC3339))
}

// rootCommonName is the subject CN of the self-signed root.
const rootCommonName = "sdsagent dev root"

// signer issues certificates with one CA key. Its chain runs from the
// signing certificate up to the root: just [root] when the root signs
// directly, [intermediate..., root] when an intermediate does. Every issued
// chain is the new certificate followed by that chain, as istiod returns it.
type signer struct {
	key      crypto.Signer
	chain    []*x509.Certificate // chain[0] signs; the last element is the root
	chainPEM []string            // PEM of chain, same order
	// notBefore and notAfter bound the time in which every certificate of
	// chain is valid; issued certificates never reach outside it.
	notBefore, notAfter time.Time
}

// newSigner checks that key belongs to chain[0] and that each certificate is
// signed by the next, and returns a signer for them.
func newSigner(key crypto.Signer, chain []*x509.Certificate) (*signer, error) {
	if len(chain) == 0 {
		return nil, errors.New("empty ca chain")
	}
	if err := keyMatchesCert(key, chain[0]); err != nil {
		return nil, err
	}
	for i, c := range chain {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("certificate %s is not a CA", certName(c))
		}
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("certificate %s lacks the cert sign key usage", certName(c))
		}
		parent := c // the last element must be self-signed
		if i+1 < len(chain) {
			parent = chain[i+1]
		}
		if err := c.CheckSignatureFrom(parent); err != nil {
			return nil, fmt.Errorf("certificate %s is not signed by %s: %w", certName(c), certName(parent), err)
		}
	}
	s := &signer{key: key, chain: chain, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, c := range chain {
		s.chainPEM = append(s.chainPEM, string(encodeCertPEM(c.Raw)))
		if c.NotBefore.After(s.notBefore) {
			s.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(s.notAfter) {
			s.notAfter = c.NotAfter
		}
	}
	return s, nil
}

// intermediate reports whether an intermediate CA signs, rather than the
// root itself.
func (s *signer) intermediate() bool { return len(s.chain) > 1 }

// checkIssuable signs a throwaway workload certificate in trustDomain and
// verifies it against the root the way a peer would, so that a chain whose
// path length, name constraints or validity would fail every certificate
// it issues is refused at start rather than at the first request.
func (s *signer) checkIssuable(trustDomain string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	id := &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/ns/sdsagent/sa/startup-check"}
	leaf, _, err := s.issueWorkload(key.Public(), id, now, time.Minute)
	if err != nil {
		return err
	}
	if err := pki.VerifyChain(leaf, s.chain[:len(s.chain)-1], []*x509.Certificate{s.root()}, now); err != nil {
		return fmt.Errorf("a workload certificate for trust domain %q signed with it would not verify: %w", trustDomain, err)
	}
	return nil
}

// root returns the trust anchor at the top of the chain.
func (s *signer) root() *x509.Certificate { return s.chain[len(s.chain)-1] }

// issueWorkload signs a SPIFFE leaf for pub valid from now-clockSkew to
// now+ttl, both clamped to the validity of the CA chain. It returns
// the leaf and the PEM chain to hand out: leaf first, root last.
func (s *signer) issueWorkload(pub any, id *url.URL, now time.Time, ttl time.Duration) (*x509.Certificate, []string, error) {
	tmpl := &x509.Certificate{
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		// The subject stays empty, so Go marks the SAN extension critical
		// as RFC 5280 requires.
		URIs: []*url.URL{id},
	}
	leaf, err := s.sign(tmpl, pub, now)
	if err != nil {
		return nil, nil, err
	}
	chain := make([]string, 0, 1+len(s.chainPEM))
	chain = append(chain, string(encodeCertPEM(leaf.Raw)))
	chain = append(chain, s.chainPEM...)
	return leaf, chain, nil
}

// issueServing creates a fresh ECDSA P-256 key and a TLS server certificate
// for the default names plus extra, whose entries may be DNS names or IPs.
func (s *signer) issueServing(extra []string, trustDomain string, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "sdsagent dev ca", Organization: []string{trustDomain}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(servingValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	seen := make(map[string]bool)
	for _, n := range append(defaultServerNames(), extra...) {
		if seen[n] {
			continue
		}
		seen[n] = true
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	leaf, err := s.sign(tmpl, key.Public(), now)
	if err != nil {
		return tls.Certificate{}, err
	}
	// Send the intermediates, if any, but not the root: clients have it.
	certs := [][]byte{leaf.Raw}
	for _, c := range s.chain[:len(s.chain)-1] {
		certs = append(certs, c.Raw)
	}
	return tls.Certificate{Certificate: certs, PrivateKey: key, Leaf: leaf}, nil
}

// sign fills in the serial number, clamps the validity to the CA chain's
// and signs tmpl for pub.
func (s *signer) sign(tmpl *x509.Certificate, pub any, now time.Time) (*x509.Certificate, error) {
	if now.Before(s.notBefore) || now.After(s.notAfter) {
		return nil, &notValidError{notBefore: s.notBefore, notAfter: s.notAfter, now: now}
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if tmpl.NotBefore.Before(s.notBefore) {
		tmpl.NotBefore = s.notBefore
	}
	if tmpl.NotAfter.After(s.notAfter) {
		tmpl.NotAfter = s.notAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.chain[0], pub, s.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	return cert, nil
}

// newRoot creates a self-signed ECDSA P-256 root for trustDomain, valid for
// rootValidity from now.
func newRoot(trustDomain string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: rootCommonName, Organization: []string{trustDomain}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// One level of intermediate CA below the root is allowed, so that the
		// root can later delegate signing without being reissued.
		MaxPathLen: 1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse root: %w", err)
	}
	return cert, key, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n, nil
		}
	}
}

// keyMatchesCert reports an error if key is not the private key of cert.
func keyMatchesCert(key crypto.Signer, cert *x509.Certificate) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return fmt.Errorf("unsupported key type %T", key)
	}
	if !pub.Equal(cert.PublicKey) {
		return errors.New("private key does not match the certificate's public key")
	}
	return nil
}

// certName names a certificate in errors: its subject, or its serial
// number when the subject is empty.
func certName(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return fmt.Sprintf("%q", s)
	}
	return "with serial " + c.SerialNumber.Text(16)
}

func encodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
