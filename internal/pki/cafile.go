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
