package debug

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/pki"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// mint signs a certificate with a fixed serial and validity, so that the
// table shows the same values on every run. parent nil self-signs.
func mint(t *testing.T, cn string, serial int64, notBefore, notAfter time.Time, isCA bool, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func date(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// goldenDump returns a dump, as the server makes it, of certificates with
// fixed serials and dates: a valid leaf and intermediate, a valid and an
// expired root, and a file root; plus one warming secret.
func goldenDump(t *testing.T) *SecretsDump {
	t.Helper()
	rootA, rootAKey := mint(t, "root A", 0x1a2b3c4d5e6f, date("2025-01-01T00:00:00Z"), date("2035-01-01T00:00:00Z"), true, nil, nil)
	rootB, _ := mint(t, "root B", 0x7fffffffffffffff, date("2015-01-01T00:00:00Z"), date("2025-01-01T00:00:00Z"), true, nil, nil)
	inter, interKey := mint(t, "intermediate", 0x0f00, date("2025-01-01T00:00:00Z"), date("2030-01-01T00:00:00Z"), true, rootA, rootAKey)
	leaf, _ := mint(t, "leaf", 0x2bcdef0123456789, date("2026-03-01T00:00:00Z"), date("2026-03-02T00:00:00Z"), false, inter, interKey)

	store := cache.NewStore(clock.Real())
	store.Update([]*cache.Secret{
		{Name: cache.RootCertName, Kind: cache.ValidationContext, TrustedCAPEM: pki.EncodeCertificates([]*x509.Certificate{rootA, rootB})},
		{Name: fileRootName, Kind: cache.ValidationContext, TrustedCAPEM: pki.EncodeCertificates([]*x509.Certificate{rootA})},
		{Name: cache.WorkloadCertName, Kind: cache.TLSCertificate, CertChainPEM: pki.EncodeCertificates([]*x509.Certificate{leaf, inter}), PrivateKeyPEM: pki.PrivateKeyPEM("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")},
	}, nil)
	s := newServer(t, Config{Secrets: secretsOf(store, fakeToProto)})
	dump, err := s.secretsDump(s.cfg.Secrets())
	if err != nil {
		t.Fatal(err)
	}
	dump.DynamicWarmingSecrets = append(dump.DynamicWarmingSecrets, &DynamicSecret{Name: fileCertName})
	return dump
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run with -update to accept):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestWriteTableGolden(t *testing.T) {
	dump := goldenDump(t)
	// Through JSON, as the CLI sees it.
	body, err := secretsJSON(dump)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseSecrets(body)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, parsed, date("2026-03-01T12:00:00Z")); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "secrets_table.golden", buf.Bytes())

	t.Run("select", func(t *testing.T) {
		sel, err := Select(parsed, cache.RootCertName)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteTable(&buf, sel, date("2026-03-01T12:00:00Z")); err != nil {
			t.Fatal(err)
		}
		checkGolden(t, "secrets_table_rootca.golden", buf.Bytes())
	})
}

func TestWriteTableErrors(t *testing.T) {
	tests := []struct {
		name  string
		entry *DynamicSecret
		want  string
	}{
		{"no content", &DynamicSecret{Name: "x"}, `secret "x": no content`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dump := &SecretsDump{DynamicActiveSecrets: []*DynamicSecret{tt.entry}}
			err := WriteTable(&bytes.Buffer{}, dump, time.Now())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("WriteTable = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestSecretPEM(t *testing.T) {
	f, _, base := secretsServer(t)
	raw, err := FetchSecrets(context.Background(), strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	dump, err := ParseSecrets(raw)
	if err != nil {
		t.Fatal(err)
	}
	fileRoot, _ := f.store.Snapshot().Get(fileRootName)
	tests := []struct {
		name    string
		want    []byte
		wantErr string
	}{
		{name: cache.WorkloadCertName, want: f.chainPEM},
		{name: cache.RootCertName, want: f.rootsPEM},
		{name: fileRootName, want: fileRoot.TrustedCAPEM},
		{name: "nope", wantErr: `secret "nope" is not served; the agent serves: default, ROOTCA, ` + fileCertName + ", " + fileRootName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SecretPEM(dump, tt.name)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("SecretPEM = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("SecretPEM =\n%s\nwant\n%s", got, tt.want)
			}
			f.assertNoKey(t, "pem", got)
		})
	}
}

func TestFetchSecrets(t *testing.T) {
	_, s, base := secretsServer(t)
	addr := strings.TrimPrefix(base, "http://")
	_, port, _ := net.SplitHostPort(addr)
	want, err := s.secretsDump(s.cfg.Secrets())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{addr, base, base + "/", ":" + port, "0.0.0.0:" + port} {
		t.Run(a, func(t *testing.T) {
			raw, err := FetchSecrets(context.Background(), a)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseSecrets(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !sameDump(t, got, want) {
				t.Fatal("fetched dump differs from the served one")
			}
		})
	}
}

func TestFetchSecretsUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	_, err = FetchSecrets(context.Background(), addr)
	var ue *UnreachableError
	if !errors.As(err, &ue) || ue.Addr != addr {
		t.Fatalf("FetchSecrets = %v, want *UnreachableError for %s", err, addr)
	}
	for _, want := range []string{addr, "sdsagent run", "--http-addr", "connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := FetchSecrets(ctx, addr); !errors.Is(err, context.Canceled) || errors.As(err, &ue) {
		t.Errorf("FetchSecrets with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestFetchSecretsStatus(t *testing.T) {
	tests := []struct {
		name string
		code int
		body string
		want string
	}{
		{"forbidden", http.StatusForbidden, "forbidden: /debug/ answers only loopback callers (127.0.0.0/8, ::1)\n", "loopback --http-addr"},
		{"not found", http.StatusNotFound, "404 page not found\n", "has no /debug/secrets"},
		{"server error", http.StatusInternalServerError, "debug: secret \"ROOTCA\": boom\nmore\n", `answered 500 Internal Server Error: debug: secret "ROOTCA": boom`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, strings.TrimSuffix(tt.body, "\n"), tt.code)
			}))
			t.Cleanup(srv.Close)
			_, err := FetchSecrets(context.Background(), srv.Listener.Addr().String())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("FetchSecrets = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestAgentURL(t *testing.T) {
	tests := []struct {
		addr, want, wantErr string
	}{
		{addr: "127.0.0.1:15020", want: "http://127.0.0.1:15020/debug/secrets"},
		{addr: ":15020", want: "http://127.0.0.1:15020/debug/secrets"},
		{addr: "0.0.0.0:15020", want: "http://127.0.0.1:15020/debug/secrets"},
		{addr: "[::]:15020", want: "http://[::1]:15020/debug/secrets"},
		{addr: "[::1]:15020", want: "http://[::1]:15020/debug/secrets"},
		{addr: "localhost:15020", want: "http://localhost:15020/debug/secrets"},
		{addr: "http://127.0.0.1:15020/", want: "http://127.0.0.1:15020/debug/secrets"},
		{addr: "", wantErr: "empty"},
		{addr: "127.0.0.1", wantErr: "missing port"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, err := agentURL(tt.addr, "/debug/secrets")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("agentURL = %q, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("agentURL = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseSecretsInvalid(t *testing.T) {
	for _, in := range []string{"", "not json", `{"dynamicActiveSecrets": [{"secret": {"@type": "type.googleapis.com/no.such.Type"}}]}`} {
		if _, err := ParseSecrets([]byte(in)); err == nil {
			t.Errorf("ParseSecrets(%q) succeeded", in)
		}
	}
	// Unknown fields from a newer agent are ignored.
	if _, err := ParseSecrets([]byte(`{"dynamicActiveSecrets": [], "somethingNew": 1}`)); err != nil {
		t.Errorf("ParseSecrets with an unknown field = %v", err)
	}
}
