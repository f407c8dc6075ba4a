package devca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

func TestNew_CreatesState(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	dir := filepath.Join(t.TempDir(), "nested", "ca")
	ca := newCA(t, devca.Config{Dir: dir, TrustDomain: "example.org", Clock: clocktest.New(start)})

	if got, want := ca.RootCertPath(), filepath.Join(dir, "root-cert.pem"); got != want {
		t.Errorf("RootCertPath = %q, want %q", got, want)
	}
	if got, want := ca.TokenPath(), filepath.Join(dir, "token"); got != want {
		t.Errorf("TokenPath = %q, want %q", got, want)
	}

	modes := []struct {
		name string
		path string
		want os.FileMode
	}{
		{name: "dir", path: dir, want: 0o700 | os.ModeDir},
		{name: "key", path: filepath.Join(dir, "ca-key.pem"), want: 0o600},
		{name: "token", path: ca.TokenPath(), want: 0o600},
		{name: "root", path: ca.RootCertPath(), want: 0o644},
	}
	for _, tc := range modes {
		t.Run("mode "+tc.name, func(t *testing.T) {
			fi, err := os.Stat(tc.path)
			if err != nil {
				t.Fatalf("stat: %v", err)
			}
			if got := fi.Mode() & (os.ModeDir | os.ModePerm); got != tc.want {
				t.Errorf("mode of %s = %v, want %v", tc.path, got, tc.want)
			}
		})
	}

	t.Run("no temporary files left", func(t *testing.T) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("read dir: %v", err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if got, want := strings.Join(names, " "), "ca-key.pem root-cert.pem token"; got != want {
			t.Errorf("dir holds %q, want %q", got, want)
		}
	})

	t.Run("token", func(t *testing.T) {
		raw, err := hex.DecodeString(readToken(t, ca))
		if err != nil || len(raw) != 32 {
			t.Errorf("token is not 32 hex-encoded bytes (err %v, %d bytes)", err, len(raw))
		}
	})

	t.Run("root", func(t *testing.T) {
		data, err := os.ReadFile(ca.RootCertPath())
		if err != nil {
			t.Fatalf("read root: %v", err)
		}
		if !bytes.Equal(data, ca.RootPEM()) {
			t.Error("RootPEM differs from root-cert.pem")
		}
		root := parseCert(t, string(data))
		if root.Subject.CommonName != "sdsagent dev root" {
			t.Errorf("CN = %q", root.Subject.CommonName)
		}
		if len(root.Subject.Organization) != 1 || root.Subject.Organization[0] != "example.org" {
			t.Errorf("O = %q, want [example.org]", root.Subject.Organization)
		}
		if !root.IsCA || !root.BasicConstraintsValid || root.MaxPathLen != 1 {
			t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d, want a CA with path length 1",
				root.IsCA, root.BasicConstraintsValid, root.MaxPathLen)
		}
		if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; root.KeyUsage != want {
			t.Errorf("KeyUsage = %v, want %v", root.KeyUsage, want)
		}
		if err := root.CheckSignatureFrom(root); err != nil {
			t.Errorf("root is not self-signed: %v", err)
		}
		pub, ok := root.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("root key is %T, want ECDSA P-256", root.PublicKey)
		}
		if want := start.AddDate(10, 0, 0); root.NotAfter.Before(want.Add(-72*time.Hour)) || root.NotAfter.After(want) {
			t.Errorf("NotAfter = %s, want about 10 years after %s", root.NotAfter, start)
		}
		if root.NotBefore.After(start) {
			t.Errorf("NotBefore = %s is after creation at %s", root.NotBefore, start)
		}
	})

	t.Run("key", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
		if err != nil {
			t.Fatalf("read key: %v", err)
		}
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "PRIVATE KEY" {
			t.Fatal("ca-key.pem is not a PKCS#8 PEM block")
		}
		if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
			t.Errorf("parse PKCS#8: %v", err)
		}
	})
}

func TestNew_RestartKeepsState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	first := newCA(t, devca.Config{Dir: dir})
	firstToken := readToken(t, first)
	keyBefore, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatalf("read key: %v", err)
	}

	second, client, secondToken := startCA(t, devca.Config{Dir: dir})
	if !bytes.Equal(first.RootPEM(), second.RootPEM()) {
		t.Error("root changed across restart")
	}
	if firstToken != secondToken {
		t.Error("token changed across restart")
	}
	keyAfter, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatalf("read key: %v", err)
	}
	if !bytes.Equal(keyBefore, keyAfter) {
		t.Error("ca-key.pem changed across restart")
	}

	// A client set up against the first instance works with the second.
	key := testpki.NewKey(t)
	resp, err := client.CreateCertificate(authCtx(t, firstToken), &securityapi.IstioCertificateRequest{
		Csr: csrPEM(t, csrSpec{key: key, uris: []string{workloadID}}),
	})
	if err != nil {
		t.Fatalf("CreateCertificate after restart: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(first.RootPEM())
	leaf := parseCert(t, resp.GetCertChain()[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("leaf from restarted CA does not verify against the first root: %v", err)
	}
}

func TestNew_BadState(t *testing.T) {
	writeKey := func(t *testing.T, dir string, key any) {
		t.Helper()
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatalf("marshal key: %v", err)
		}
		writeFile(t, dir, "ca-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	tests := []struct {
		name    string
		breakIt func(t *testing.T, dir string)
		want    []string // substrings of the error
	}{
		{
			name:    "corrupt key",
			breakIt: func(t *testing.T, dir string) { writeFile(t, dir, "ca-key.pem", []byte("garbage")) },
			want:    []string{"ca-key.pem", "no PEM block found"},
		},
		{
			name: "key not PKCS#8",
			breakIt: func(t *testing.T, dir string) {
				writeFile(t, dir, "ca-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("junk")}))
			},
			want: []string{"ca-key.pem", `"PRIVATE KEY" block`},
		},
		{
			name: "encrypted key",
			breakIt: func(t *testing.T, dir string) {
				writeFile(t, dir, "ca-key.pem", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte("junk")}))
			},
			want: []string{"ca-key.pem", "private key is encrypted", "openssl pkey -in key.pem -out key-plain.pem"},
		},
		{
			name:    "key does not match root",
			breakIt: func(t *testing.T, dir string) { writeKey(t, dir, testpki.NewKey(t)) },
			want:    []string{"ca-key.pem", "private key does not match", "root-cert.pem"},
		},
		{
			name:    "corrupt root",
			breakIt: func(t *testing.T, dir string) { writeFile(t, dir, "root-cert.pem", []byte("garbage")) },
			want:    []string{"root-cert.pem", "no valid PEM block"},
		},
		{
			name: "truncated root",
			breakIt: func(t *testing.T, dir string) {
				data := readFile(t, dir, "root-cert.pem")
				block, _ := pem.Decode(data)
				block.Bytes = block.Bytes[:len(block.Bytes)/2]
				writeFile(t, dir, "root-cert.pem", pem.EncodeToMemory(block))
			},
			want: []string{"root-cert.pem", "parse certificate"},
		},
		{
			name: "root is not a CA",
			breakIt: func(t *testing.T, dir string) {
				leaf := testpki.NewRoot(t, "other").IssueLeaf(t, testpki.LeafOptions{URIs: []string{workloadID}})
				writeFile(t, dir, "root-cert.pem", leaf.CertPEM)
				writeKey(t, dir, leaf.Key)
			},
			want: []string{"root-cert.pem", "is not a CA"},
		},
		{
			name: "root expired",
			breakIt: func(t *testing.T, dir string) {
				now := time.Now()
				old := testpki.NewRootValid(t, "old", now.Add(-48*time.Hour), now.Add(-24*time.Hour))
				writeFile(t, dir, "root-cert.pem", old.CertPEM)
				writeKey(t, dir, old.Key)
			},
			want: []string{"root-cert.pem", "not valid now"},
		},
		{
			name:    "missing key",
			breakIt: func(t *testing.T, dir string) { removeFile(t, dir, "ca-key.pem") },
			want:    []string{"incomplete state", "missing ca-key.pem"},
		},
		{
			name:    "missing root",
			breakIt: func(t *testing.T, dir string) { removeFile(t, dir, "root-cert.pem") },
			want:    []string{"incomplete state", "missing root-cert.pem"},
		},
		{
			name:    "missing token",
			breakIt: func(t *testing.T, dir string) { removeFile(t, dir, "token") },
			want:    []string{"incomplete state", "missing token"},
		},
		{
			name:    "empty token",
			breakIt: func(t *testing.T, dir string) { writeFile(t, dir, "token", []byte("\n")) },
			want:    []string{"token: token is empty"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			newCA(t, devca.Config{Dir: dir})
			tc.breakIt(t, dir)
			before := snapshotDir(t, dir)

			ca, err := devca.New(devca.Config{Dir: dir})
			if err == nil {
				t.Fatalf("New succeeded on broken state (root %s)", ca.RootCertPath())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if after := snapshotDir(t, dir); after != before {
				t.Errorf("New changed the state dir:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestNew_BadConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  devca.Config
		want string
	}{
		{name: "no dir", cfg: devca.Config{}, want: "dir is required"},
		{name: "uppercase trust domain", cfg: devca.Config{Dir: dir, TrustDomain: "Example.org"}, want: `trust domain "Example.org"`},
		{name: "trust domain with path", cfg: devca.Config{Dir: dir, TrustDomain: "example.org/x"}, want: `character '/' is not allowed`},
		{name: "negative max ttl", cfg: devca.Config{Dir: dir, MaxTTL: -time.Hour}, want: "max TTL -1h0m0s is negative"},
		{name: "negative default ttl", cfg: devca.Config{Dir: dir, DefaultTTL: -time.Hour}, want: "default TTL -1h0m0s is negative"},
		{name: "empty server name", cfg: devca.Config{Dir: dir, ServerNames: []string{"ok.example", " "}}, want: "server names: empty name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := devca.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("bad config wrote state (%d entries, err %v)", len(entries), err)
	}
}

func TestNew_DoesNotModifyConfig(t *testing.T) {
	names := []string{" ca.example.test "}
	cfg := devca.Config{Dir: filepath.Join(t.TempDir(), "ca"), ServerNames: names}
	newCA(t, cfg)
	if cfg.TrustDomain != "" || cfg.MaxTTL != 0 || cfg.Clock != nil || cfg.Logger != nil || names[0] != " ca.example.test " {
		t.Errorf("New wrote defaults into the caller's config: %+v", cfg)
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return data
}

func removeFile(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatalf("remove %s: %v", name, err)
	}
}

// snapshotDir describes every file in dir with its content.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read dir: %v", err)
	}
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(e.Name() + "=" + hex.EncodeToString(readFile(t, dir, e.Name())) + ";")
	}
	return b.String()
}
