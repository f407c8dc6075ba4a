package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Check names one of the checks Verify makes.
type Check string

// The checks, in the order Verify makes them.
const (
	CheckParse       Check = "parse"         // the chain is empty or not certificates
	CheckKeyMismatch Check = "key_mismatch"  // the leaf is for another key
	CheckIdentity    Check = "identity"      // the leaf is not for exactly the requested SPIFFE ID
	CheckNotYetValid Check = "not_yet_valid" // the leaf's NotBefore is in the future
	CheckExpired     Check = "expired"       // the leaf's NotAfter has passed
	CheckChain       Check = "chain"         // the chain does not verify to a root
)

// VerifyError says which check refused a chain and why.
type VerifyError struct {
	Check Check
	Err   error
}

func (e *VerifyError) Error() string { return fmt.Sprintf("%s: %v", e.Check, e.Err) }

func (e *VerifyError) Unwrap() error { return e.Err }

// Bundle is a verified workload certificate with its trust anchors.
type Bundle struct {
	// Leaf is the workload certificate.
	Leaf *x509.Certificate
	// Intermediates are the certificates between Leaf and the root, in order.
	Intermediates []*x509.Certificate
	// Roots are the trust anchors the chain was verified against.
	Roots []*x509.Certificate
	// ChainPEM is Leaf followed by Intermediates, the root left out.
	ChainPEM []byte
	// RootsPEM is Roots in PEM.
	RootsPEM []byte
}

// VerifyInput is what Verify checks.
type VerifyInput struct {
	// Chain is the CA's answer, leaf first. Its last certificate must be
	// a self-signed root: the root it is verified against.
	Chain []*x509.Certificate
	// Key is the public key the leaf must be for.
	Key crypto.PublicKey
	// ID is the only SPIFFE ID the leaf may carry.
	ID ID
	// Now is the time at which the leaf must be valid.
	Now time.Time
}

// Verify checks a chain returned by a CA before it may be served: the leaf
// matches the key, carries exactly the requested SPIFFE ID, is valid at
// in.Now, and chains to the root. A failure is a *VerifyError.
func Verify(in VerifyInput) (*Bundle, error) {
	if len(in.Chain) == 0 {
		return nil, &VerifyError{CheckParse, fmt.Errorf("CA returned %w", ErrNoCertificates)}
	}
	leaf := in.Chain[0]
	rest := in.Chain[1:]
	var roots []*x509.Certificate
	// The anchor must say it is a CA; a v1 certificate without basic
	// constraints, which crypto/x509 would accept, is not served as one.
	if n := len(rest); n > 0 && rest[n-1].IsCA && IsSelfSigned(rest[n-1]) {
		roots = append(roots, rest[n-1])
		rest = rest[:n-1]
	}

	pub, ok := in.Key.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, &VerifyError{CheckKeyMismatch, errors.New("the leaf certificate is for another key than the one in our CSR")}
	}
	if leaf.IsCA {
		return nil, &VerifyError{CheckIdentity, errors.New("the leaf certificate is a CA certificate")}
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != in.ID.String() {
		return nil, &VerifyError{CheckIdentity, fmt.Errorf("the leaf certificate has URI SANs %v, want exactly [%s]", leaf.URIs, in.ID)}
	}
	now := in.Now.Round(0)
	if now.Before(leaf.NotBefore) {
		return nil, &VerifyError{CheckNotYetValid, fmt.Errorf("the leaf certificate is not valid until %s (now %s); check the clocks of this host and the CA", leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
	}
	if now.After(leaf.NotAfter) {
		return nil, &VerifyError{CheckExpired, fmt.Errorf("the leaf certificate expired at %s (now %s); check the clocks of this host and the CA", leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
	}
	if len(roots) == 0 {
		return nil, &VerifyError{CheckChain, errors.New("the chain does not end in a self-signed root; configure the CA to send its root certificate last (Istio sends leaf, intermediates, root)")}
	}
	if err := VerifyChain(leaf, rest, roots, now); err != nil {
		return nil, &VerifyError{CheckChain, err}
	}
	chain := append([]*x509.Certificate{leaf}, rest...)
	return &Bundle{
		Leaf:          leaf,
		Intermediates: rest,
		Roots:         roots,
		ChainPEM:      EncodeCertificates(chain),
		RootsPEM:      EncodeCertificates(roots),
	}, nil
}

// VerifyChain checks that cert chains through intermediates to one of
// roots at now: signatures, validity, path lengths and name constraints,
// whatever the key usage.
func VerifyChain(cert *x509.Certificate, intermediates, roots []*x509.Certificate, now time.Time) error {
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	interPool := x509.NewCertPool()
	for _, c := range intermediates {
		interPool.AddCert(c)
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: interPool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}

// IsSelfSigned reports whether c is self-issued (issuer = subject) and
// signed by its own key, as a root is. For a v3 certificate that implies
// basic constraints CA:TRUE (crypto/x509 checks it); a v1 certificate has
// none, so callers that need a CA check c.IsCA too.
func IsSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
