package cache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

// writeFile writes content to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// half returns the first half of b: a half-written file.
func half(b []byte) []byte { return b[:len(b)/2] }

func TestLoadKeyPair(t *testing.T) {
	root := testpki.NewRoot(t, "file root")
	now := time.Now()
	good := root.NewIntermediate(t, "file intermediate").IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{"web"}})
	other := root.IssueLeaf(t, testpki.LeafOptions{})
	expired := root.IssueLeaf(t, testpki.LeafOptions{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})

	tests := []struct {
		name       string
		cert, key  []byte
		noCert     bool
		wantReason string
		wantFile   string // "cert" or "key"
	}{
		{name: "valid pair with intermediate", cert: good.ChainPEM, key: good.KeyPEM},
		{name: "key of another certificate", cert: good.ChainPEM, key: other.KeyPEM, wantReason: FileKeyMismatch, wantFile: "key"},
		{name: "half-written chain", cert: half(good.ChainPEM), key: good.KeyPEM, wantReason: FileMalformed, wantFile: "cert"},
		{name: "half-written key", cert: good.ChainPEM, key: half(good.KeyPEM), wantReason: FileMalformed, wantFile: "key"},
		{name: "empty chain", cert: nil, key: good.KeyPEM, wantReason: FileEmpty, wantFile: "cert"},
		{name: "white space key", cert: good.ChainPEM, key: []byte("\n  \n"), wantReason: FileEmpty, wantFile: "key"},
		{name: "key in the chain file", cert: append(bytes.Clone(good.ChainPEM), good.KeyPEM...), key: good.KeyPEM, wantReason: FileMalformed, wantFile: "cert"},
		{name: "expired leaf", cert: expired.ChainPEM, key: expired.KeyPEM, wantReason: FileExpired, wantFile: "cert"},
		{name: "missing chain", noCert: true, key: good.KeyPEM, wantReason: FileMissing, wantFile: "cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			certPath := filepath.Join(dir, "tls.crt")
			if !tt.noCert {
				writeFile(t, dir, "tls.crt", tt.cert)
			}
			keyPath := writeFile(t, dir, "tls.key", tt.key)
			sec, _, err := loadKeyPair("file-cert:x", certPath, keyPath, now)
			if tt.wantReason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if sec.Kind != TLSCertificate || !bytes.Equal(sec.CertChainPEM, good.ChainPEM) || !bytes.Equal(sec.PrivateKeyPEM, good.KeyPEM) ||
					len(sec.Certs) != 2 || sec.Source != certPath {
					t.Fatalf("loaded %+v", sec)
				}
				return
			}
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FileError", err)
			}
			wantPath := map[string]string{"cert": certPath, "key": keyPath}[tt.wantFile]
			if fe.Reason != tt.wantReason || fe.Path != wantPath {
				t.Fatalf("refused %s for %q, want %s for %s (%v)", fe.Path, fe.Reason, wantPath, tt.wantReason, err)
			}
			if !strings.Contains(err.Error(), wantPath) || fe.Hint() == "" {
				t.Fatalf("error %q does not name the file, or no hint", err)
			}
			for _, k := range [][]byte{good.KeyPEM, other.KeyPEM, expired.KeyPEM} {
				body := strings.Split(string(k), "\n")[1]
				if strings.Contains(err.Error(), body) {
					t.Fatal("key material in the error")
				}
			}
		})
	}
}

func TestLoadRoots(t *testing.T) {
	r1, r2 := testpki.NewRoot(t, "r1"), testpki.NewRoot(t, "r2")
	bundle := append(bytes.Clone(r1.CertPEM), r2.CertPEM...)
	truncated, err := os.ReadFile("../testdata/pem/truncated-cert.pem")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		content    []byte
		wantReason string
	}{
		{"bundle of two", bundle, ""},
		{"half-written bundle", bundle[:len(bundle)-40], FileMalformed},
		{"truncated fixture", truncated, FileMalformed},
		{"empty", nil, FileEmpty},
		{"a key, not certificates", r1.IssueLeaf(t, testpki.LeafOptions{}).KeyPEM, FileMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "ca.crt", tt.content)
			sec, _, err := loadRoots("file-root:"+p, p)
			if tt.wantReason == "" {
				if err != nil || sec.Kind != ValidationContext || len(sec.Certs) != 2 || !bytes.Equal(sec.TrustedCAPEM, bundle) {
					t.Fatalf("loadRoots = %+v, %v", sec, err)
				}
				return
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Reason != tt.wantReason || fe.Path != p {
				t.Fatalf("err = %v, want %s for %s", err, tt.wantReason, p)
			}
		})
	}
}

func TestLoadSystemRoots(t *testing.T) {
	dir := t.TempDir()
	r1, r2 := testpki.NewRoot(t, "r1"), testpki.NewRoot(t, "r2")
	// As distributions ship it: comments between blocks, and a
	// certificate Go cannot parse, which is skipped.
	lenient := []byte("# r1\n" + string(r1.CertPEM) + "# broken\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" + string(r2.CertPEM))
	second := writeFile(t, dir, "second.crt", lenient)
	third := writeFile(t, dir, "third.crt", r1.CertPEM)
	missing := filepath.Join(dir, "missing.crt")

	sec, _, err := loadSystemRoots(SystemRootName, []string{missing, second, third})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Source != second || len(sec.Certs) != 2 {
		t.Fatalf("served %s with %d certificates, want the first existing file with the 2 parsable ones", sec.Source, len(sec.Certs))
	}

	truncated := writeFile(t, dir, "truncated.crt", half(lenient))
	if _, _, err := loadSystemRoots(SystemRootName, []string{truncated}); err == nil {
		t.Fatal("a truncated system bundle was accepted")
	}
	_, _, err = loadSystemRoots(SystemRootName, []string{missing})
	var fe *FileError
	if !errors.As(err, &fe) || fe.Reason != FileMissing {
		t.Fatalf("no bundle: err = %v, want %s", err, FileMissing)
	}
}

func TestParseFileName(t *testing.T) {
	tests := []struct {
		name    string
		want    fileSpec
		wantErr string
	}{
		{"file-cert:/etc/certs/tls.crt~/etc/certs/tls.key", fileSpec{kind: TLSCertificate, cert: "/etc/certs/tls.crt", key: "/etc/certs/tls.key"}, ""},
		{"file-root:/etc/certs/ca.crt", fileSpec{kind: ValidationContext, ca: "/etc/certs/ca.crt"}, ""},
		{"file-root:system", fileSpec{kind: ValidationContext, system: true}, ""},
		{"file-cert:/etc/certs/tls.crt", fileSpec{}, `no "~"`},
		{"file-cert:/a~/b~/c", fileSpec{}, `more than one "~"`},
		{"file-cert:~/etc/certs/tls.key", fileSpec{}, "certificate path is empty"},
		{"file-cert:/etc/certs/tls.crt~", fileSpec{}, "key path is empty"},
		{"file-cert:certs/tls.crt~/etc/certs/tls.key", fileSpec{}, `"certs/tls.crt" is not absolute`},
		{"file-root:", fileSpec{}, "CA path is empty"},
		{"file-root:ca.crt", fileSpec{}, "not absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFileName(tt.name)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("parseFileName = %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "want file-") {
				t.Fatalf("err = %v, want it to say %q and show the expected form", err, tt.wantErr)
			}
		})
	}
}
