package cfsslclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// maxChainDepth bounds the walk from CFSSL's signer up to a root.
const maxChainDepth = 8

// completeChain returns leaf, CFSSL's signer and the certificates above it
// up to a self-signed root, all but leaf and signer taken from the root
// file: the roots the workload trusts come from the agent's configuration,
// not from CFSSL's answer. The leaf is not checked here; the caller
// verifies the whole chain.
func (c *Client) completeChain(leafPEM, signerPEM string) ([]string, error) {
	signers, err := pki.ParseCertificates([]byte(signerPEM))
	if err != nil {
		return nil, fmt.Errorf("cfssl info: signer certificate: %w", err)
	}
	file, err := pki.ReadCARootFile(c.cfg.RootCertFile)
	if err != nil {
		return nil, err
	}
	cur := signers[0]
	chain := []string{strings.TrimSpace(leafPEM) + "\n"}
	for depth := 0; ; depth++ {
		if pki.IsSelfSigned(cur) {
			if !containsCert(file, cur) {
				return nil, fmt.Errorf("cfssl info: CFSSL's signer %q is a root that %s does not hold (add it there if it is the CA the workloads trust)", cur.Subject, c.cfg.RootCertFile)
			}
			return append(chain, encode(cur)), nil
		}
		chain = append(chain, encode(cur))
		if depth == maxChainDepth {
			break
		}
		parent := issuerIn(file, cur)
		if parent == nil {
			return nil, fmt.Errorf("cfssl info: no certificate in %s issued CFSSL's signer chain at %q (issuer %q): put the root, and any intermediate above CFSSL's signer, in that file",
				c.cfg.RootCertFile, cur.Subject, cur.Issuer)
		}
		cur = parent
	}
	return nil, fmt.Errorf("cfssl info: no root within %d certificates above CFSSL's signer in %s", maxChainDepth, c.cfg.RootCertFile)
}

func encode(c *x509.Certificate) string {
	return string(pki.EncodeCertificates([]*x509.Certificate{c}))
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, o := range certs {
		if o.Equal(c) {
			return true
		}
	}
	return false
}

// issuerIn returns the CA certificate in certs that signed c.
func issuerIn(certs []*x509.Certificate, c *x509.Certificate) *x509.Certificate {
	for _, p := range certs {
		if !p.Equal(c) && c.CheckSignatureFrom(p) == nil {
			return p
		}
	}
	return nil
}

// serverVerifyError is a failed verification of CFSSL's TLS certificate.
type serverVerifyError struct{ err error }

func (e *serverVerifyError) Error() string { return "verify CFSSL certificate: " + e.err.Error() }
func (e *serverVerifyError) Unwrap() error { return e.err }

// verifyServer verifies CFSSL's certificate chain against the certificates
// in rootFile and that the leaf is valid for serverName.
func verifyServer(cs tls.ConnectionState, rootFile, serverName string) error {
	certs, err := pki.ReadCARootFile(rootFile)
	if err != nil {
		return &serverVerifyError{err}
	}
	if len(cs.PeerCertificates) == 0 {
		return &serverVerifyError{errors.New("CFSSL sent no certificate")}
	}
	if err := pki.VerifyServerChain(cs.PeerCertificates, certs, serverName); err != nil {
		return &serverVerifyError{err}
	}
	return nil
}
