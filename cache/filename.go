// This file parses the file-cert: and file-root: resource names.

package cache

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Prefixes and names of file-backed resources, as Istio's agent names
// them.
const (
	// FileCertPrefix starts "file-cert:<cert-path>~<key-path>", a
	// TlsCertificate read from a PEM chain and its PEM private key.
	FileCertPrefix = "file-cert:"
	// FileRootPrefix starts "file-root:<ca-path>", a ValidationContext
	// read from a PEM bundle.
	FileRootPrefix = "file-root:"
	// SystemRootName is the operating system's trust bundle.
	SystemRootName = FileRootPrefix + "system"
)

// fileSpec is a parsed file-backed resource name.
type fileSpec struct {
	kind Kind
	// cert and key are set for a TLSCertificate, ca for a
	// ValidationContext; system means the OS bundle.
	cert, key, ca string
	system        bool
	// allowEmpty takes a ca file holding only white space as no
	// certificates rather than refusing it (the trust anchors file).
	allowEmpty bool
	// crl reads the ca file as PEM CRLs (the CRL file).
	crl bool
}

// isFileName reports whether name asks for a file-backed resource,
// well-formed or not.
func isFileName(name string) bool {
	return strings.HasPrefix(name, FileCertPrefix) || strings.HasPrefix(name, FileRootPrefix)
}

// parseFileName parses a file-backed resource name. The error says what
// is wrong and shows the expected form.
func parseFileName(name string) (fileSpec, error) {
	switch {
	case strings.HasPrefix(name, FileCertPrefix):
		const form = "want file-cert:<cert-path>~<key-path> with absolute paths, e.g. file-cert:/etc/certs/tls.crt~/etc/certs/tls.key"
		rest := strings.TrimPrefix(name, FileCertPrefix)
		parts := strings.Split(rest, "~")
		switch {
		case len(parts) < 2:
			return fileSpec{}, fmt.Errorf("malformed resource name %q: no \"~\" between the certificate and key paths; %s", name, form)
		case len(parts) > 2:
			return fileSpec{}, fmt.Errorf("malformed resource name %q: more than one \"~\"; %s", name, form)
		}
		if err := checkPath(name, "certificate", parts[0], form); err != nil {
			return fileSpec{}, err
		}
		if err := checkPath(name, "key", parts[1], form); err != nil {
			return fileSpec{}, err
		}
		return fileSpec{kind: TLSCertificate, cert: parts[0], key: parts[1]}, nil
	case strings.HasPrefix(name, FileRootPrefix):
		const form = "want file-root:<ca-path> with an absolute path, e.g. file-root:/etc/certs/ca.crt, or file-root:system"
		rest := strings.TrimPrefix(name, FileRootPrefix)
		if rest == "system" {
			return fileSpec{kind: ValidationContext, system: true}, nil
		}
		if err := checkPath(name, "CA", rest, form); err != nil {
			return fileSpec{}, err
		}
		return fileSpec{kind: ValidationContext, ca: rest}, nil
	default:
		return fileSpec{}, fmt.Errorf("resource name %q is not file-backed", name)
	}
}

func checkPath(name, what, p, form string) error {
	switch {
	case p == "":
		return fmt.Errorf("malformed resource name %q: the %s path is empty; %s", name, what, form)
	case !filepath.IsAbs(p):
		return fmt.Errorf("malformed resource name %q: the %s path %q is not absolute; %s", name, what, p, form)
	}
	return nil
}

// paths returns the files the resource is read from; for the system
// bundle, every candidate, so that the one in use is chosen again when
// they change.
func (s fileSpec) paths(systemRoots []string) []string {
	switch {
	case s.system:
		return systemRoots
	case s.kind == TLSCertificate:
		return []string{s.cert, s.key}
	default:
		return []string{s.ca}
	}
}

// DefaultSystemRootFiles returns the files Go's crypto/x509 reads the
// Linux trust bundle from, in its order; file-root:system serves the
// first that exists.
func DefaultSystemRootFiles() []string {
	return []string{
		"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo, Arch
		"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
		"/etc/ssl/ca-bundle.pem",                            // openSUSE
		"/etc/pki/tls/cacert.pem",                           // OpenELEC
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
		"/etc/ssl/cert.pem",                                 // Alpine
	}
}
