package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// CRLBlockType is the PEM block type of a certificate revocation list, as
// OpenSSL writes it.
const CRLBlockType = "X509 CRL"

// ErrNoCRLs is returned when PEM input holds no CRL.
var ErrNoCRLs = errors.New("no CRLs found")

// ParseCRLs parses every PEM "X509 CRL" block of data, in order. Any other
// block, or bytes after the last complete block, is an error, so that a
// half-written file is never taken for a shorter one.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var crls []*x509.RevocationList
	rest := data
	for {
		block, next := pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				if len(crls) == 0 {
					return nil, errors.New("parse crls: no valid PEM block (truncated or not PEM)")
				}
				return nil, fmt.Errorf("parse crls: %d bytes after CRL %d are not a complete PEM block (truncated or corrupt)", len(bytes.TrimSpace(rest)), len(crls))
			}
			break
		}
		if block.Type != CRLBlockType {
			return nil, fmt.Errorf("parse crls: block %d has type %q, want %q", len(crls)+1, block.Type, CRLBlockType)
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse crls: CRL %d: %w", len(crls)+1, err)
		}
		crls = append(crls, crl)
		rest = next
	}
	if len(crls) == 0 {
		return nil, fmt.Errorf("parse crls: %w", ErrNoCRLs)
	}
	return crls, nil
}

// EncodeCRLs returns the PEM form of crls, in order.
func EncodeCRLs(crls []*x509.RevocationList) []byte {
	var buf bytes.Buffer
	for _, c := range crls {
		buf.Write(pem.EncodeToMemory(&pem.Block{Type: CRLBlockType, Bytes: c.Raw}))
	}
	return buf.Bytes()
}

// WithoutCRLs returns data without its PEM CRL blocks, e.g. the roots of
// a SPIFFE trust bundle that carries CRLs for Envoy. Other blocks and any
// trailing bytes are kept as they are, so parsing the result still finds
// a truncated file.
func WithoutCRLs(data []byte) []byte {
	if !bytes.Contains(data, []byte("-----BEGIN "+CRLBlockType+"-----")) {
		return data
	}
	var out []byte
	rest := data
	for {
		block, next := pem.Decode(rest)
		if block == nil {
			return append(out, rest...)
		}
		if block.Type != CRLBlockType {
			out = append(out, pem.EncodeToMemory(block)...)
		}
		rest = next
	}
}
