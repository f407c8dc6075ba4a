// This file defines what is served: Secret, its kinds, the resource
// names the agent always serves, and Snapshot.

package cache

import (
	"bytes"
	"crypto/x509"
	"slices"
	"strings"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// Resource names the agent always serves, as Istio's agent names them.
const (
	// WorkloadCertName is the workload's key and certificate chain.
	WorkloadCertName = "default"
	// RootCertName is the trust anchors that verify peers.
	RootCertName = "ROOTCA"
	// AllBundlesName is every trust bundle the agent knows, its own trust
	// domain's and the federated ones, in the form of Envoy's SPIFFE
	// certificate validator, as spire-agent serves it under this name. It
	// is published while a stream asks for it.
	AllBundlesName = "ALL"
)

// Kind says what a Secret holds.
type Kind int

// Kinds of secret, matching Envoy's Secret oneof.
const (
	// TLSCertificate is a private key with its certificate chain.
	TLSCertificate Kind = iota + 1
	// ValidationContext is a set of trusted CA certificates.
	ValidationContext
)

func (k Kind) String() string {
	switch k {
	case TLSCertificate:
		return "tls_certificate"
	case ValidationContext:
		return "validation_context"
	default:
		return "unknown"
	}
}

// Secret is one verified resource ready to serve. A published Secret is
// never modified: a change publishes a new *Secret.
type Secret struct {
	// Name is the SDS resource name.
	Name string
	// Kind selects which of the fields below are set.
	Kind Kind
	// CertChainPEM is the leaf followed by intermediates (TLSCertificate).
	CertChainPEM []byte
	// PrivateKeyPEM is the leaf's key (TLSCertificate). It prints redacted.
	PrivateKeyPEM pki.PrivateKeyPEM
	// TrustedCAPEM holds the trust anchors (ValidationContext): with
	// Bundles, those of the agent's own trust domain, which are then not
	// served as such but are what OutputWriter writes.
	TrustedCAPEM []byte
	// CRLPEM holds the CRLs served with TrustedCAPEM (ValidationContext
	// without Bundles), and OnlyVerifyLeafCRL says that they cover leaves
	// only: not every CA up to the roots has its CRL in CRLPEM.
	CRLPEM            []byte
	OnlyVerifyLeafCRL bool
	// Bundles, when not empty, make a ValidationContext a set of SPIFFE
	// trust bundles, one per trust domain in this order, served for
	// Envoy's SPIFFE certificate validator instead of TrustedCAPEM.
	Bundles []TrustBundle
	// Certs are the parsed certificates: the chain for a TLSCertificate,
	// the anchors for a ValidationContext (with Bundles, those of every
	// bundle, each once).
	Certs []*x509.Certificate
	// UpdatedAt is when this content was first published.
	UpdatedAt time.Time
	// Source says where the content came from, e.g. "ca" or a file path.
	Source string
}

// SameContent reports whether s and o would be served identically.
func (s *Secret) SameContent(o *Secret) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.Name == o.Name && s.Kind == o.Kind &&
		bytes.Equal(s.CertChainPEM, o.CertChainPEM) &&
		bytes.Equal(s.PrivateKeyPEM, o.PrivateKeyPEM) &&
		bytes.Equal(s.TrustedCAPEM, o.TrustedCAPEM) &&
		bytes.Equal(s.CRLPEM, o.CRLPEM) && s.OnlyVerifyLeafCRL == o.OnlyVerifyLeafCRL &&
		slices.EqualFunc(s.Bundles, o.Bundles, func(a, b TrustBundle) bool {
			return a.TrustDomain == b.TrustDomain && bytes.Equal(a.RootsPEM, b.RootsPEM) && bytes.Equal(a.CRLPEM, b.CRLPEM)
		})
}

// TrustBundle is the trust anchors of one SPIFFE trust domain. Like the
// Secret holding it, it is never modified once published.
type TrustBundle struct {
	// TrustDomain is the trust domain's name, without "spiffe://".
	TrustDomain string
	// RootsPEM is Roots in PEM.
	RootsPEM []byte
	// CRLPEM are CRLs served inside the bundle, where Envoy's SPIFFE
	// validator reads them (it checks every CA of a chain then).
	CRLPEM []byte
	// Roots verify certificates of the trust domain.
	Roots []*x509.Certificate
}

// NotAfter returns when the secret stops being useful: the leaf's NotAfter
// for a TLSCertificate, the earliest anchor's for a ValidationContext.
func (s *Secret) NotAfter() time.Time {
	if len(s.Certs) == 0 {
		return time.Time{}
	}
	if s.Kind == TLSCertificate {
		return s.Certs[0].NotAfter
	}
	earliest := s.Certs[0].NotAfter
	for _, c := range s.Certs[1:] {
		if c.NotAfter.Before(earliest) {
			earliest = c.NotAfter
		}
	}
	return earliest
}

// Snapshot is an immutable set of secrets by name.
type Snapshot struct {
	secrets map[string]*Secret
}

// Get returns the secret named name.
func (s *Snapshot) Get(name string) (*Secret, bool) {
	if s == nil {
		return nil, false
	}
	sec, ok := s.secrets[name]
	return sec, ok
}

// Len returns the number of secrets.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.secrets)
}

// Names returns the names in a stable order: default, ROOTCA, then the
// rest sorted.
func (s *Snapshot) Names() []string {
	if s == nil {
		return nil
	}
	names := make([]string, 0, len(s.secrets))
	for n := range s.secrets {
		names = append(names, n)
	}
	SortNames(names)
	return names
}

// SortNames sorts resource names as the debug views list them: default,
// ROOTCA, then the rest in byte order.
func SortNames(names []string) {
	rank := func(n string) int {
		switch n {
		case WorkloadCertName:
			return 0
		case RootCertName:
			return 1
		default:
			return 2
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
}
