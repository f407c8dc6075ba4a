// Package testpki is an in-process certificate authority for tests: roots,
// intermediates and SPIFFE leaves with chosen lifetimes and keys.
// It is imported only by _test.go files and test tools.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// CA is a signing authority: a self-signed root or an intermediate.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	// Parent is the issuing CA, nil for a root.
	Parent *CA
}

// NewRoot returns a self-signed root CA valid from an hour ago for a year.
func NewRoot(tb testing.TB, commonName string) *CA {
	tb.Helper()
	now := time.Now()
	return NewRootValid(tb, commonName, now.Add(-time.Hour), now.Add(365*24*time.Hour))
}

// NewRootValid returns a self-signed root CA valid between notBefore and notAfter.
func NewRootValid(tb testing.TB, commonName string, notBefore, notAfter time.Time) *CA {
	tb.Helper()
	key := NewKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"sdsagent test"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatalf("testpki: create root: %v", err)
	}
	return newCA(tb, der, key, nil)
}

// NewIntermediate returns a CA signed by ca, valid as long as ca.
func (ca *CA) NewIntermediate(tb testing.TB, commonName string) *CA {
	tb.Helper()
	key := NewKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"sdsagent test"}},
		NotBefore:             ca.Cert.NotBefore,
		NotAfter:              ca.Cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		tb.Fatalf("testpki: create intermediate: %v", err)
	}
	return newCA(tb, der, key, ca)
}

// Root returns the self-signed root at the top of ca's chain.
func (ca *CA) Root() *CA {
	for ca.Parent != nil {
		ca = ca.Parent
	}
	return ca
}

// LeafOptions describe a leaf certificate. Zero values get defaults.
type LeafOptions struct {
	// URIs are the URI SANs, e.g. "spiffe://cluster.local/ns/default/sa/foo".
	URIs []string
	// DNSNames are DNS SANs.
	DNSNames []string
	// NotBefore defaults to a minute ago; NotAfter to an hour from now.
	NotBefore, NotAfter time.Time
	// Key defaults to a new ECDSA P-256 key.
	Key crypto.Signer
}

// Leaf is an issued end-entity certificate with its key.
type Leaf struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
	// ChainPEM is the leaf followed by every intermediate, without the root.
	ChainPEM []byte
	// FullChainPEM is ChainPEM followed by the root, as an Istio CA returns it.
	FullChainPEM []byte
}

// IssueLeaf signs a client-and-server leaf certificate.
func (ca *CA) IssueLeaf(tb testing.TB, opts LeafOptions) *Leaf {
	tb.Helper()
	now := time.Now()
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-time.Minute)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(time.Hour)
	}
	if opts.Key == nil {
		opts.Key = NewKey(tb)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		NotBefore:             opts.NotBefore,
		NotAfter:              opts.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              opts.DNSNames,
	}
	for _, u := range opts.URIs {
		parsed, err := url.Parse(u)
		if err != nil {
			tb.Fatalf("testpki: parse URI SAN %q: %v", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, opts.Key.Public(), ca.Key)
	if err != nil {
		tb.Fatalf("testpki: create leaf: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testpki: parse leaf: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(opts.Key)
	if err != nil {
		tb.Fatalf("testpki: marshal key: %v", err)
	}
	leaf := &Leaf{
		Cert:    cert,
		Key:     opts.Key,
		CertPEM: EncodeCert(der),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	leaf.ChainPEM = append([]byte{}, leaf.CertPEM...)
	for c := ca; c.Parent != nil; c = c.Parent {
		leaf.ChainPEM = append(leaf.ChainPEM, c.CertPEM...)
	}
	leaf.FullChainPEM = append(append([]byte{}, leaf.ChainPEM...), ca.Root().CertPEM...)
	return leaf
}

// SignCSR issues a leaf for a PEM or DER CSR, copying its URI SANs.
func (ca *CA) SignCSR(tb testing.TB, csr *x509.CertificateRequest, notBefore, notAfter time.Time) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  csr.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		tb.Fatalf("testpki: sign csr: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testpki: parse signed csr: %v", err)
	}
	return cert
}

// NewKey returns a new ECDSA P-256 key.
func NewKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("testpki: generate key: %v", err)
	}
	return key
}

// EncodeCert returns the PEM form of a DER certificate.
func EncodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func newCA(tb testing.TB, der []byte, key crypto.Signer, parent *CA) *CA {
	tb.Helper()
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testpki: parse CA: %v", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCert(der), Parent: parent}
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		tb.Fatalf("testpki: serial: %v", err)
	}
	return n
}
