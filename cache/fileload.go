// This file reads and validates the PEM files of file-backed secrets,
// reading only regular files of bounded size.

package cache

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
)

// Reasons a file-backed secret is refused; they are the "reason" label of
// the file errors metric.
const (
	FileMissing     = "missing"      // the file does not exist
	FileUnreadable  = "unreadable"   // it exists but cannot be read (permissions, a directory)
	FileEmpty       = "empty"        // it holds nothing but white space
	FileMalformed   = "malformed"    // not complete PEM of the expected type: half-written, truncated, garbage
	FileKeyMismatch = "key_mismatch" // the private key is not the leaf certificate's
	FileExpired     = "expired"      // the leaf certificate has expired
	FileNotRegular  = "not_regular"  // not a regular file: a FIFO, a device, a socket, a directory
	FileTooLarge    = "too_large"    // larger than maxPEMFileSize
)

// maxPEMFileSize bounds every PEM file the agent reads for a secret. Any
// client of the socket can name a path in file-root: or file-cert:, so
// without a bound a large file would be read whole into memory. The
// largest real input is an operating system trust bundle (Debian's is
// about 220 KiB); a chain, a key or a CRL is a few KiB. 1 MiB is several
// times the largest of them.
const maxPEMFileSize = 1 << 20

// FileError says why a file-backed secret was refused: which file and
// why. It never holds key material.
type FileError struct {
	// Path is the file at fault.
	Path string
	// Reason is one of the File* reasons.
	Reason string
	// Err is the underlying error.
	Err error
}

func (e *FileError) Error() string { return fmt.Sprintf("%s: %s: %v", e.Path, e.Reason, e.Err) }

func (e *FileError) Unwrap() error { return e.Err }

// Hint tells the operator what to do about the error.
func (e *FileError) Hint() string {
	switch e.Reason {
	case FileMissing:
		return "create the file or fix the path; it is served as soon as a valid file appears"
	case FileUnreadable:
		return "make the file readable by the agent's user"
	case FileNotRegular:
		return "name a regular file (a symbolic link to one is fine); FIFOs, devices, sockets and directories are never read"
	case FileTooLarge:
		return fmt.Sprintf("a PEM file the agent reads must be at most %d bytes; name the file that holds only the certificates or key wanted", maxPEMFileSize)
	case FileEmpty, FileMalformed:
		if errors.Is(e.Err, pki.ErrEncryptedKey) || errors.Is(e.Err, pki.ErrDER) {
			return "convert the file with the openssl command the error names, then replace it atomically"
		}
		return "write complete PEM; replace files atomically (write a temporary file in the same directory, then rename it) so readers never see half a file"
	case FileKeyMismatch:
		return "the key and the first certificate of the chain must belong together: replace both files in one update"
	case FileExpired:
		return "replace the certificate with a valid one; the agent does not renew file-backed certificates"
	default:
		return ""
	}
}

// maxPairReads bounds how often a pair is read again when its files were
// swapped while being read (a Kubernetes secret update between the two
// reads).
const maxPairReads = 3

// loadKeyPair reads a PEM certificate chain (leaf first) and its PEM
// private key and returns them as a TLSCertificate named name. It refuses
// an empty or incomplete file, a key that is not the leaf's, and a leaf
// expired at now, with a *FileError naming the file. It also returns a
// digest of the bytes read, set whenever both files could be read, so
// that unchanged input is not validated (and its refusal logged) again.
func loadKeyPair(name, certPath, keyPath string, now time.Time) (*Secret, [sha256.Size]byte, error) {
	var certPEM, keyPEM []byte
	for i := 0; ; i++ {
		before := [2]string{evalSymlinks(certPath), evalSymlinks(keyPath)}
		var err error
		if certPEM, err = readPEMFile(certPath); err != nil {
			return nil, [sha256.Size]byte{}, err
		}
		if keyPEM, err = readPEMFile(keyPath); err != nil {
			return nil, [sha256.Size]byte{}, err
		}
		after := [2]string{evalSymlinks(certPath), evalSymlinks(keyPath)}
		if before == after || i+1 == maxPairReads {
			break
		}
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	var digest [sha256.Size]byte
	h.Sum(digest[:0])

	certs, err := pki.ParseCertificates(certPEM)
	if err != nil {
		return nil, digest, &FileError{Path: certPath, Reason: FileMalformed, Err: err}
	}
	key, err := pki.ParsePrivateKey(keyPEM)
	if err != nil {
		// ParsePrivateKey's errors describe structure, never key bytes.
		return nil, digest, &FileError{Path: keyPath, Reason: FileMalformed, Err: err}
	}
	leaf := certs[0]
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, digest, &FileError{Path: keyPath, Reason: FileKeyMismatch,
			Err: fmt.Errorf("the private key does not match the leaf certificate of %s (serial %x)", certPath, leaf.SerialNumber)}
	}
	if now.Round(0).After(leaf.NotAfter) {
		return nil, digest, &FileError{Path: certPath, Reason: FileExpired,
			Err: fmt.Errorf("the leaf certificate (serial %x) expired at %s", leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	return &Secret{
		Name:          name,
		Kind:          TLSCertificate,
		CertChainPEM:  pki.EncodeCertificates(certs),
		PrivateKeyPEM: pki.PrivateKeyPEM(keyPEM),
		Certs:         certs,
		Source:        certPath,
	}, digest, nil
}

// loadRoots reads a PEM bundle of trust anchors and returns it as a
// ValidationContext named name, with the digest of the bytes read. Every
// block must be a certificate and the file must end after a complete
// block, so a half-written bundle is never taken for a shorter one.
// Expired anchors are kept: bundles carry them while roots rotate.
func loadRoots(name, path string) (*Secret, [sha256.Size]byte, error) {
	data, err := readPEMFile(path)
	if err != nil {
		return nil, [sha256.Size]byte{}, err
	}
	digest := sha256.Sum256(data)
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		return nil, digest, &FileError{Path: path, Reason: FileMalformed, Err: err}
	}
	return rootsSecret(name, path, certs), digest, nil
}

// loadRootsOrNone is loadRoots, except that a file holding only white
// space is no certificates rather than an error: it is how an operator
// empties the trust anchors file. A missing file is still refused.
func loadRootsOrNone(name, path string) (*Secret, [sha256.Size]byte, error) {
	data, err := readBoundedFile(path)
	if err == nil && len(bytes.TrimSpace(data)) == 0 {
		return &Secret{Name: name, Kind: ValidationContext, Source: path}, sha256.Sum256(data), nil
	}
	return loadRoots(name, path)
}

// loadSystemRoots reads the first of candidates that exists. The OS
// bundle is read leniently, as crypto/x509 reads it: blocks that are not
// certificates or do not parse (distributions ship a few that Go refuses)
// are skipped, but the file must still end after a complete block and
// hold at least one certificate.
func loadSystemRoots(name string, candidates []string) (*Secret, [sha256.Size]byte, error) {
	var path string
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			path = c
			break
		}
	}
	if path == "" {
		first := ""
		if len(candidates) > 0 {
			first = candidates[0]
		}
		return nil, [sha256.Size]byte{}, &FileError{Path: first, Reason: FileMissing,
			Err: fmt.Errorf("none of the operating system trust bundles exists: %v", candidates)}
	}
	data, err := readPEMFile(path)
	if err != nil {
		return nil, [sha256.Size]byte{}, err
	}
	h := sha256.New()
	h.Write([]byte(path))
	h.Write([]byte{0})
	h.Write(data)
	var digest [sha256.Size]byte
	h.Sum(digest[:0])

	var certs []*x509.Certificate
	rest := data
	for {
		block, next := pem.Decode(rest)
		if block == nil {
			break
		}
		rest = next
		if block.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			certs = append(certs, c)
		}
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, digest, &FileError{Path: path, Reason: FileMalformed,
			Err: fmt.Errorf("%d bytes after the last certificate are not a complete PEM block (truncated or corrupt)", len(bytes.TrimSpace(rest)))}
	}
	if len(certs) == 0 {
		return nil, digest, &FileError{Path: path, Reason: FileMalformed, Err: pki.ErrNoCertificates}
	}
	return rootsSecret(name, path, certs), digest, nil
}

func rootsSecret(name, path string, certs []*x509.Certificate) *Secret {
	return &Secret{
		Name:         name,
		Kind:         ValidationContext,
		TrustedCAPEM: pki.EncodeCertificates(certs),
		Certs:        certs,
		Source:       path,
	}
}

// readPEMFile reads a file that must not be empty, with the limits of
// readBoundedFile.
func readPEMFile(path string) ([]byte, error) {
	data, err := readBoundedFile(path)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &FileError{Path: path, Reason: FileEmpty, Err: errors.New("the file is empty")}
	}
	return data, nil
}

// readBoundedFile reads path, following symbolic links, only if it leads
// to a regular file of at most maxPEMFileSize bytes. A FIFO would block
// the reader and a device such as /dev/zero would never end, so anything
// else is refused: before opening it (opening some devices acts on them),
// and again on the opened descriptor, in case the path was swapped in
// between. The open does not block on a FIFO (O_NONBLOCK).
func readBoundedFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err == nil {
		err = checkRegular(path, fi)
	}
	if err != nil {
		return nil, fileOpenError(path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fileOpenError(path, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err == nil {
		err = checkRegular(path, fi)
	}
	if err != nil {
		return nil, fileOpenError(path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPEMFileSize+1))
	if err != nil {
		return nil, &FileError{Path: path, Reason: FileUnreadable, Err: err}
	}
	if len(data) > maxPEMFileSize {
		return nil, tooLarge(path)
	}
	return data, nil
}

// checkRegular refuses fi unless it is a regular file of at most
// maxPEMFileSize bytes.
func checkRegular(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return &FileError{Path: path, Reason: FileNotRegular,
			Err: fmt.Errorf("the path leads to a %s, not a regular file", fileType(fi.Mode()))}
	}
	if fi.Size() > maxPEMFileSize {
		return tooLarge(path)
	}
	return nil
}

func tooLarge(path string) *FileError {
	return &FileError{Path: path, Reason: FileTooLarge,
		Err: fmt.Errorf("the file is larger than %d bytes, the most the agent reads for a secret", maxPEMFileSize)}
}

// fileOpenError is err as a *FileError about path.
func fileOpenError(path string, err error) error {
	var fe *FileError
	switch {
	case errors.As(err, &fe):
		return fe
	case errors.Is(err, fs.ErrNotExist):
		return &FileError{Path: path, Reason: FileMissing, Err: errors.New("no such file")}
	default:
		return &FileError{Path: path, Reason: FileUnreadable, Err: err}
	}
}

// fileType names the type of a file that is not regular.
func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeDir != 0:
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeIrregular != 0:
		return "file of unknown type"
	default:
		return "non-regular file"
	}
}

// evalSymlinks returns where path leads now, or "" if it leads nowhere.
func evalSymlinks(path string) string {
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ""
	}
	return p
}
