package devca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// minRSABits is the smallest RSA key the CA signs for, as in Istio.
const minRSABits = 2048

// refusalKind says why a request was turned down; CreateCertificate maps it
// to a gRPC code.
type refusalKind int

const (
	refusedUnauthenticated refusalKind = iota + 1 // no or wrong credentials
	refusedInvalid                                // malformed request
	refusedForbidden                              // well-formed, but not for this CA
)

// refusal is a request the CA turns down. Its message goes back to the
// caller, so it never holds secrets.
type refusal struct {
	kind refusalKind
	msg  string
}

func (r *refusal) Error() string { return r.msg }

func refuse(kind refusalKind, format string, args ...any) error {
	return &refusal{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// parseCSR decodes a PEM CSR, checks its signature and its identity, and
// returns it with its SPIFFE ID. The CSR must name exactly one identity, a
// SPIFFE ID in trustDomain.
func parseCSR(csrPEM, trustDomain string) (*x509.CertificateRequest, *url.URL, error) {
	if strings.TrimSpace(csrPEM) == "" {
		return nil, nil, refuse(refusedInvalid, "csr is empty")
	}
	block, rest := pem.Decode([]byte(csrPEM))
	if block == nil {
		return nil, nil, refuse(refusedInvalid, "csr is not PEM encoded")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, nil, refuse(refusedInvalid, "csr PEM block is %q, want CERTIFICATE REQUEST", block.Type)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, nil, refuse(refusedInvalid, "csr has data after its PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, nil, refuse(refusedInvalid, "csr does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, refuse(refusedInvalid, "csr signature does not verify: %v", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, nil, refuse(refusedInvalid, "csr public key: %v", err)
	}
	switch {
	case len(csr.DNSNames) > 0:
		return nil, nil, refuse(refusedInvalid, "csr carries DNS SANs %q; only one SPIFFE URI SAN is allowed", csr.DNSNames)
	case len(csr.IPAddresses) > 0:
		return nil, nil, refuse(refusedInvalid, "csr carries IP SANs %v; only one SPIFFE URI SAN is allowed", csr.IPAddresses)
	case len(csr.EmailAddresses) > 0:
		return nil, nil, refuse(refusedInvalid, "csr carries email SANs %q; only one SPIFFE URI SAN is allowed", csr.EmailAddresses)
	case len(csr.URIs) != 1:
		return nil, nil, refuse(refusedInvalid, "csr carries %d URI SANs, want exactly one SPIFFE ID", len(csr.URIs))
	}
	id := csr.URIs[0]
	td, err := spiffeTrustDomain(id)
	if err != nil {
		return nil, nil, refuse(refusedInvalid, "csr URI SAN %q is not a valid SPIFFE ID: %v", id, err)
	}
	if td != trustDomain {
		return nil, nil, refuse(refusedForbidden, "csr SPIFFE ID %q is in trust domain %q; this CA signs only for %q", id, td, trustDomain)
	}
	return csr, id, nil
}

// checkPublicKey refuses key types and sizes that are too weak or unknown.
func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("RSA key of %d bits, want at least %d", k.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	return nil
}

// spiffeTrustDomain checks that u is a SPIFFE ID for a workload
// (spiffe://trust-domain/path, no port, user info, query or fragment, no
// empty, "." or ".." path segments) and returns its trust domain.
func spiffeTrustDomain(u *url.URL) (string, error) {
	if u.Scheme != "spiffe" {
		return "", fmt.Errorf("scheme is %q, want \"spiffe\"", u.Scheme)
	}
	rest, ok := strings.CutPrefix(u.String(), "spiffe://")
	if !ok {
		return "", errors.New("not of the form spiffe://trust-domain/path")
	}
	td, path, ok := strings.Cut(rest, "/")
	if err := pki.CheckTrustDomain(td); err != nil {
		return "", err
	}
	if !ok || path == "" {
		return "", errors.New("path is empty")
	}
	for seg := range strings.SplitSeq(path, "/") {
		switch seg {
		case "":
			return "", errors.New("path has an empty segment")
		case ".", "..":
			return "", fmt.Errorf("path has a %q segment", seg)
		}
		for _, c := range seg {
			if !isLowerAlnum(c) && !(c >= 'A' && c <= 'Z') && c != '.' && c != '-' && c != '_' {
				return "", fmt.Errorf("path has character %q", c)
			}
		}
	}
	return td, nil
}

func isLowerAlnum(c rune) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }
