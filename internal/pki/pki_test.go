package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

func TestGenerateKeyAndCSR(t *testing.T) {
	id, err := WorkloadID("cluster.local", "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kt   KeyType
		want func(any) bool
	}{
		{ECDSAP256, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P256() }},
		{ECDSAP384, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P384() }},
		{RSA2048, func(k any) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 2048 }},
		{RSA3072, func(k any) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 3072 }},
		{RSA4096, func(k any) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 4096 }},
	}
	for _, tt := range tests {
		t.Run(string(tt.kt), func(t *testing.T) {
			key, err := GenerateKey(tt.kt)
			if err != nil {
				t.Fatal(err)
			}
			csrPEM, err := NewCSR(key, id)
			if err != nil {
				t.Fatal(err)
			}
			csrs, err := parseCSR(csrPEM)
			if err != nil {
				t.Fatal(err)
			}
			if err := csrs.CheckSignature(); err != nil {
				t.Fatalf("CSR signature: %v", err)
			}
			if !tt.want(csrs.PublicKey) {
				t.Fatalf("CSR public key %T is not %s", csrs.PublicKey, tt.kt)
			}
			if len(csrs.URIs) != 1 || csrs.URIs[0].String() != "spiffe://cluster.local/ns/default/sa/web" {
				t.Fatalf("CSR URIs = %v", csrs.URIs)
			}
			if len(csrs.DNSNames)+len(csrs.EmailAddresses)+len(csrs.IPAddresses) != 0 || csrs.Subject.CommonName != "" {
				t.Fatalf("CSR carries another identity: %+v", csrs.Subject)
			}
			keyPEM, err := EncodePrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParsePrivateKey(keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(back.Public()) {
				t.Fatal("key did not survive PEM round trip")
			}
		})
	}
}

func parseCSR(p []byte) (*x509.CertificateRequest, error) {
	block, rest := pem.Decode(p)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(rest) != 0 {
		return nil, errors.New("want exactly one CERTIFICATE REQUEST block")
	}
	return x509.ParseCertificateRequest(block.Bytes)
}

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyType
		wantErr bool
	}{
		{"ecdsa-p256", ECDSAP256, false},
		{"ECDSA_P384", ECDSAP384, false},
		{"rsa-4096", RSA4096, false},
		{"rsa-1024", "", true},
		{"", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseKeyType(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseKeyType(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
}

func TestKeyTypeFromIstio(t *testing.T) {
	tests := []struct {
		name    string
		alg     string
		curve   string
		bits    int
		want    KeyType
		wantErr bool
	}{
		{"istio default is RSA 2048", "", "", 0, RSA2048, false},
		{"rsa 4096", "", "", 4096, RSA4096, false},
		{"ecdsa default curve", "ECDSA", "", 0, ECDSAP256, false},
		{"ecdsa p384", "ECDSA", "P384", 0, ECDSAP384, false},
		{"bad curve", "ECDSA", "P521", 0, "", true},
		{"bad rsa size", "", "", 1024, "", true},
		{"bad algorithm", "ED25519", "", 0, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := KeyTypeFromIstio(tt.alg, tt.curve, tt.bits)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("KeyTypeFromIstio = %q, %v", got, err)
			}
		})
	}
}

func TestWorkloadIDRejectsBadParts(t *testing.T) {
	tests := []struct{ td, ns, sa string }{
		{"Cluster.Local", "ns", "sa"},
		{"", "ns", "sa"},
		{"cluster.local", "", "sa"},
		{"cluster.local", "ns/x", "sa"},
		{"cluster.local", "ns", ".."},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%s", tt.td, tt.ns, tt.sa), func(t *testing.T) {
			if _, err := WorkloadID(tt.td, tt.ns, tt.sa); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestParseCertificatesRejectsMalformedFiles(t *testing.T) {
	tests := []struct {
		file    string
		wantErr string
	}{
		{"empty.pem", "no certificates"},
		{"garbage.pem", "not PEM"},
		{"truncated-cert.pem", "truncated"},
		{"trailing-garbage.pem", "after certificate 1"},
		{"public-key-not-certificate.pem", `"PUBLIC KEY"`},
		{"bad-base64.pem", "not PEM"},
		{"bad-der.pem", "certificate 1"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "pem", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseCertificates(data)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseCertificates(%s) error = %v, want it to mention %q", tt.file, err, tt.wantErr)
			}
		})
	}
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "pem", "valid-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if certs, err := ParseCertificates(data); err != nil || len(certs) != 1 {
		t.Fatalf("valid-cert.pem: %d certs, %v", len(certs), err)
	}
}

// TestVerifyNoRootSaysWhatToDo: a chain that does not end in its root is
// refused with an error telling the operator what the CA must send, not
// one that points at a setting that does not exist.
func TestVerifyNoRootSaysWhatToDo(t *testing.T) {
	root := testpki.NewRoot(t, "root")
	id, _ := WorkloadID("cluster.local", "default", "web")
	key := testpki.NewKey(t)
	leaf := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{id.String()}, Key: key})
	_, err := Verify(VerifyInput{Chain: []*x509.Certificate{leaf.Cert}, Key: key.Public(), ID: id, Now: time.Now()})
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Check != CheckChain {
		t.Fatalf("Verify error = %v, want check %s", err, CheckChain)
	}
	if msg := err.Error(); !strings.Contains(msg, "send its root certificate last") || strings.Contains(msg, "configured") {
		t.Fatalf("error %q does not say the CA must send its root", msg)
	}
}

func TestVerify(t *testing.T) {
	now := time.Now()
	root := testpki.NewRoot(t, "root")
	inter := root.NewIntermediate(t, "intermediate")
	otherRoot := testpki.NewRoot(t, "other root")
	id, _ := WorkloadID("cluster.local", "default", "web")
	key := testpki.NewKey(t)
	leaf := func(ca *testpki.CA, uris []string, nb, na time.Time) *x509.Certificate {
		return ca.IssueLeaf(t, testpki.LeafOptions{URIs: uris, Key: key, NotBefore: nb, NotAfter: na}).Cert
	}
	good := leaf(root, []string{id.String()}, now.Add(-time.Minute), now.Add(time.Hour))
	tests := []struct {
		name      string
		in        VerifyInput
		wantCheck Check
		wantChain int
	}{
		{"leaf and root", VerifyInput{Chain: []*x509.Certificate{good, root.Cert}}, "", 1},
		{"leaf, intermediate and root", VerifyInput{Chain: []*x509.Certificate{leaf(inter, []string{id.String()}, now.Add(-time.Minute), now.Add(time.Hour)), inter.Cert, root.Cert}}, "", 2},
		{"empty chain", VerifyInput{}, CheckParse, 0},
		{"other key", VerifyInput{Chain: []*x509.Certificate{root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{id.String()}}).Cert, root.Cert}}, CheckKeyMismatch, 0},
		{"other id", VerifyInput{Chain: []*x509.Certificate{leaf(root, []string{"spiffe://cluster.local/ns/default/sa/db"}, now.Add(-time.Minute), now.Add(time.Hour)), root.Cert}}, CheckIdentity, 0},
		{"two ids", VerifyInput{Chain: []*x509.Certificate{leaf(root, []string{id.String(), "spiffe://cluster.local/ns/default/sa/db"}, now.Add(-time.Minute), now.Add(time.Hour)), root.Cert}}, CheckIdentity, 0},
		{"no id", VerifyInput{Chain: []*x509.Certificate{leaf(root, nil, now.Add(-time.Minute), now.Add(time.Hour)), root.Cert}}, CheckIdentity, 0},
		{"CA certificate as leaf", VerifyInput{Chain: []*x509.Certificate{inter.Cert, root.Cert}}, CheckKeyMismatch, 0},
		{"expired", VerifyInput{Chain: []*x509.Certificate{leaf(root, []string{id.String()}, now.Add(-2*time.Hour), now.Add(-time.Hour)), root.Cert}}, CheckExpired, 0},
		{"not yet valid", VerifyInput{Chain: []*x509.Certificate{leaf(root, []string{id.String()}, now.Add(time.Hour), now.Add(2*time.Hour)), root.Cert}}, CheckNotYetValid, 0},
		{"wrong root", VerifyInput{Chain: []*x509.Certificate{good, otherRoot.Cert}}, CheckChain, 0},
		{"no root", VerifyInput{Chain: []*x509.Certificate{good}}, CheckChain, 0},
		{"missing intermediate", VerifyInput{Chain: []*x509.Certificate{leaf(inter, []string{id.String()}, now.Add(-time.Minute), now.Add(time.Hour)), root.Cert}}, CheckChain, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.Key, in.ID, in.Now = key.Public(), id, now
			b, err := Verify(in)
			if tt.wantCheck == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got, err := ParseCertificates(b.ChainPEM); err != nil || len(got) != tt.wantChain {
					t.Fatalf("ChainPEM has %d certs (%v), want %d", len(got), err, tt.wantChain)
				}
				if roots, err := ParseCertificates(b.RootsPEM); err != nil || !roots[0].Equal(root.Cert) {
					t.Fatalf("RootsPEM is not the root: %v", err)
				}
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Check != tt.wantCheck {
				t.Fatalf("Verify error = %v, want check %s", err, tt.wantCheck)
			}
		})
	}
}

func TestPrivateKeyPEMNeverPrints(t *testing.T) {
	key := testpki.NewKey(t)
	p, err := EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(struct{ K PrivateKeyPEM }{p})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v %s %x %q", p, p, p, p, p, p), string(js)} {
		if strings.Contains(s, "PRIVATE KEY") || strings.Contains(s, "2d2d2d2d") {
			t.Fatalf("key material printed: %s", s)
		}
	}
}
