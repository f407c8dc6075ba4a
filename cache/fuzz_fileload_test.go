package cache

import (
	"bytes"
	"crypto"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// fileReasons are the reasons a *FileError may carry.
var fileReasons = []string{FileMissing, FileUnreadable, FileNotRegular, FileTooLarge, FileEmpty, FileMalformed, FileKeyMismatch, FileExpired}

// checkFileError fails unless err is a *FileError with a known reason
// that names one of paths and holds none of key's body.
func checkFileError(t *testing.T, err error, key []byte, paths ...string) {
	t.Helper()
	var fe *FileError
	if !errors.As(err, &fe) || !slices.Contains(fileReasons, fe.Reason) || !slices.Contains(paths, fe.Path) {
		t.Fatalf("error %v is not a *FileError with a known reason and path", err)
	}
	if fe.Hint() == "" {
		t.Fatalf("no hint for reason %q", fe.Reason)
	}
	if block, _ := pem.Decode(key); block != nil {
		for _, line := range strings.Split(string(pem.EncodeToMemory(block)), "\n") {
			if len(line) >= 16 && !strings.HasPrefix(line, "-----") && strings.Contains(err.Error(), line) {
				t.Fatalf("error carries key bytes: %v", err)
			}
		}
	}
}

// FuzzLoadKeyPair writes the input as a certificate file and a key file
// and loads them as a file-cert: secret: never a panic; a refusal is a
// *FileError without key bytes; an accepted pair is a leaf and its key,
// valid now, whose chain parses back to the same certificates.
func FuzzLoadKeyPair(f *testing.F) {
	root := testpki.NewRoot(f, "fuzz root")
	leaf := root.NewIntermediate(f, "fuzz intermediate").IssueLeaf(f, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/b"}})
	other := root.IssueLeaf(f, testpki.LeafOptions{DNSNames: []string{"other.example"}})
	expired := root.IssueLeaf(f, testpki.LeafOptions{NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	f.Add(leaf.ChainPEM, leaf.KeyPEM)
	f.Add(leaf.FullChainPEM, append(bytes.Clone(leaf.KeyPEM), "\n\n"...))
	f.Add(leaf.ChainPEM, other.KeyPEM)
	f.Add(expired.CertPEM, expired.KeyPEM)
	f.Add(leaf.KeyPEM, leaf.ChainPEM)
	f.Add(leaf.ChainPEM[:len(leaf.ChainPEM)/2], leaf.KeyPEM)
	f.Add(leaf.ChainPEM, leaf.KeyPEM[:len(leaf.KeyPEM)-30])
	f.Add([]byte("  \n"), leaf.KeyPEM)
	f.Add(leaf.ChainPEM, append(bytes.Clone(leaf.KeyPEM), leaf.KeyPEM...))
	dir := f.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		sec, _, err := loadKeyPair("file-cert:"+certPath+"~"+keyPath, certPath, keyPath, now)
		if err != nil {
			if sec != nil {
				t.Fatal("a secret with an error")
			}
			checkFileError(t, err, keyPEM, certPath, keyPath)
			return
		}
		if sec.Kind != TLSCertificate || len(sec.Certs) == 0 || !bytes.Equal(sec.PrivateKeyPEM, keyPEM) {
			t.Fatalf("accepted secret %+v", sec)
		}
		key, err := pki.ParsePrivateKey(keyPEM)
		if err != nil {
			t.Fatalf("accepted a key that does not parse: %v", err)
		}
		if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(sec.Certs[0].PublicKey) {
			t.Fatal("accepted a key that is not the leaf's")
		}
		if now.After(sec.Certs[0].NotAfter) {
			t.Fatal("accepted an expired leaf")
		}
		chain, err := pki.ParseCertificates(sec.CertChainPEM)
		if err != nil || len(chain) != len(sec.Certs) {
			t.Fatalf("served chain does not parse back: %v", err)
		}
	})
}

// FuzzLoadRoots writes the input as a CA bundle and loads it as a
// file-root: secret, strictly (loadRoots) and leniently as the system
// bundle is read: never a panic; a refusal is a *FileError; an accepted
// bundle holds at least one certificate and serves PEM that parses back
// to them.
func FuzzLoadRoots(f *testing.F) {
	root := testpki.NewRoot(f, "fuzz root")
	inter := root.NewIntermediate(f, "fuzz intermediate")
	bundle := append(bytes.Clone(root.CertPEM), inter.CertPEM...)
	f.Add(root.CertPEM)
	f.Add(bundle)
	f.Add(append(bytes.Clone(bundle), "# comment\n"...))
	f.Add(bundle[:len(bundle)-40])
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Add(append([]byte("-----BEGIN TRUSTED CERTIFICATE-----\nAAAA\n-----END TRUSTED CERTIFICATE-----\n"), root.CertPEM...))
	f.Add([]byte("\n\t \n"))
	files, _ := filepath.Glob("../testdata/pem/*.pem")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	dir := f.TempDir()
	path := filepath.Join(dir, "ca.pem")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		strict, _, err := loadRoots("file-root:"+path, path)
		if err != nil {
			checkFileError(t, err, nil, path)
		} else {
			checkRootsSecret(t, strict)
		}
		lenient, _, err := loadSystemRoots(SystemRootName, []string{filepath.Join(dir, "missing.pem"), path})
		if err != nil {
			checkFileError(t, err, nil, path, filepath.Join(dir, "missing.pem"))
			if strict != nil {
				t.Fatalf("strict load accepted what the lenient one refused: %v", err)
			}
			return
		}
		checkRootsSecret(t, lenient)
		if strict != nil && len(lenient.Certs) != len(strict.Certs) {
			t.Fatalf("lenient load kept %d certificates, strict %d", len(lenient.Certs), len(strict.Certs))
		}
	})
}

func checkRootsSecret(t *testing.T, sec *Secret) {
	t.Helper()
	if sec.Kind != ValidationContext || len(sec.Certs) == 0 {
		t.Fatalf("accepted roots secret %+v", sec)
	}
	back, err := pki.ParseCertificates(sec.TrustedCAPEM)
	if err != nil || len(back) != len(sec.Certs) {
		t.Fatalf("served bundle does not parse back to its %d certificates: %v", len(sec.Certs), err)
	}
}
