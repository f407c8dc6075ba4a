package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
)

// ID is a SPIFFE ID such as spiffe://cluster.local/ns/default/sa/web.
type ID struct {
	u *url.URL
}

// isPathSegment reports whether seg is a SPIFFE path segment: one or more
// ASCII letters, digits, '.', '-' and '_'. (A function, not a regular
// expression compiled by package initialisation at every start.)
func isPathSegment(seg string) bool {
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '-', c == '_':
		default:
			return false
		}
	}
	return seg != ""
}

// CheckTrustDomain returns an error unless td is a SPIFFE trust domain
// name: 1 to 255 lowercase letters, digits, '.', '-' and '_', without
// "spiffe://". The error says which rule td breaks.
func CheckTrustDomain(td string) error {
	if td == "" {
		return errors.New("invalid trust domain: empty")
	}
	if len(td) > 255 {
		return fmt.Errorf("invalid trust domain %q: longer than 255 characters", td)
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("invalid trust domain %q: character %q is not allowed; use lowercase letters, digits, '.', '-' and '_'", td, c)
		}
	}
	return nil
}

// WorkloadID returns the Istio workload identity
// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func WorkloadID(trustDomain, namespace, serviceAccount string) (ID, error) {
	if err := CheckTrustDomain(trustDomain); err != nil {
		return ID{}, err
	}
	for what, seg := range map[string]string{"namespace": namespace, "service account": serviceAccount} {
		if seg == "" || seg == "." || seg == ".." || !isPathSegment(seg) {
			return ID{}, fmt.Errorf("invalid %s %q: use letters, digits, '.', '-' and '_'", what, seg)
		}
	}
	return ID{u: &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/ns/" + namespace + "/sa/" + serviceAccount}}, nil
}

// String returns the URI form.
func (id ID) String() string {
	if id.u == nil {
		return ""
	}
	return id.u.String()
}

// TrustDomain returns the host part of the ID.
func (id ID) TrustDomain() string {
	if id.u == nil {
		return ""
	}
	return id.u.Host
}

// IsZero reports whether id is unset.
func (id ID) IsZero() bool { return id.u == nil }

// URL returns a copy of the ID as a URL.
func (id ID) URL() *url.URL {
	if id.u == nil {
		return nil
	}
	c := *id.u
	return &c
}

// NewCSR returns a PEM CSR signed by key whose only identity is id as a
// URI SAN, as Istio's CAs expect.
func NewCSR(key crypto.Signer, id ID) ([]byte, error) {
	if id.IsZero() {
		return nil, fmt.Errorf("create csr: empty SPIFFE ID")
	}
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
