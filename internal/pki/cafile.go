package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// ReadCARootFile reads the PEM roots a CA client verifies its CA's TLS
// certificate with (the Istio and the CFSSL client alike). Errors name
// the file once, without the path repeated by os.PathError.
func ReadCARootFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read CA root file %s: %w", path, err)
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("read CA root file %s: %w", path, err)
	}
	return certs, nil
}

// VerifyServerChain checks the chain a TLS server sent (leaf first): the
// leaf is valid for serverName and for server authentication now, and
// chains through the rest to one of roots. Both CA clients verify their
// CA this way, re-reading roots on each connection.
func VerifyServerChain(chain, roots []*x509.Certificate, serverName string) error {
	if len(chain) == 0 {
		return ErrNoCertificates
	}
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		DNSName:       serverName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, r := range roots {
		opts.Roots.AddCert(r)
	}
	for _, ic := range chain[1:] {
		opts.Intermediates.AddCert(ic)
	}
	_, err := chain[0].Verify(opts)
	return err
}
