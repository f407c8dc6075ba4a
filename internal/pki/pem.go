package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// ErrNoCertificates is returned when PEM input holds no certificate.
var ErrNoCertificates = errors.New("no certificates found")

// ParseCertificates reads every CERTIFICATE block in data. It is strict:
// other block types, bytes that are not PEM between or after blocks, and a
// block that does not parse are errors, so a half-written file or a garbled
// answer is never taken for a shorter valid one. DER input (ErrDER) and
// the other forms OpenSSL writes are refused with the openssl command that
// converts them.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		block, next := pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				if len(certs) == 0 {
					return nil, fmt.Errorf("parse certificates: %w", certNotPEMError(data))
				}
				return nil, fmt.Errorf("parse certificates: %d bytes after certificate %d are not a complete PEM block (truncated or corrupt)", len(bytes.TrimSpace(rest)), len(certs))
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("parse certificates: %w", certBlockError(block, len(certs)))
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificates: certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, cert)
		rest = next
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("parse certificates: %w", ErrNoCertificates)
	}
	return certs, nil
}

// ParseChain parses a chain given as separate PEM strings, as Istio's
// CreateCertificate returns it. An element may itself hold several
// certificates (istio-csr sends bundles).
func ParseChain(pems []string) ([]*x509.Certificate, error) {
	if len(pems) == 0 {
		return nil, fmt.Errorf("parse chain: %w", ErrNoCertificates)
	}
	var chain []*x509.Certificate
	for i, p := range pems {
		certs, err := ParseCertificates([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("parse chain: element %d: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	return chain, nil
}

// EncodeCertificates returns the PEM encoding of certs, in order.
func EncodeCertificates(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// ParseCertificate reads a file that must hold exactly one PEM certificate,
// with ParseCertificates' checks and messages.
func ParseCertificate(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("parse certificate: %d certificates, want one", len(certs))
	}
	return certs[0], nil
}
