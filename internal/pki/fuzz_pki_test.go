package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

// addPEMSeeds adds the repository's malformed and valid PEM files
// (testdata/pem at the top of the module) to f's corpus.
func addPEMSeeds(f *testing.F, add func(data []byte)) {
	f.Helper()
	files, err := filepath.Glob("../../testdata/pem/*.pem")
	if err != nil || len(files) == 0 {
		f.Fatalf("no PEM seeds in ../../testdata/pem: %v", err)
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(data)
	}
}

// FuzzParseCertificates feeds arbitrary bytes to ParseCertificates: it
// never panics, returns certificates or an error, and what it returns
// survives EncodeCertificates unchanged.
func FuzzParseCertificates(f *testing.F) {
	addPEMSeeds(f, func(b []byte) { f.Add(b) })
	root := testpki.NewRoot(f, "fuzz root")
	leaf := root.NewIntermediate(f, "fuzz intermediate").IssueLeaf(f, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/b"}})
	f.Add(leaf.FullChainPEM)
	f.Add(append(bytes.Clone(leaf.ChainPEM), "\n\n  \t"...))
	f.Add(leaf.KeyPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := ParseCertificates(data)
		if err != nil {
			if certs != nil {
				t.Fatalf("error %v with %d certificates", err, len(certs))
			}
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		again, err := ParseCertificates(EncodeCertificates(certs))
		if err != nil {
			t.Fatalf("re-encoded certificates do not parse: %v", err)
		}
		if len(again) != len(certs) {
			t.Fatalf("round trip: %d certificates, want %d", len(again), len(certs))
		}
		for i := range certs {
			if !again[i].Equal(certs[i]) {
				t.Fatalf("round trip changed certificate %d", i)
			}
		}
	})
}

// FuzzParseChain checks that ParseChain of a CA answer's elements is the
// concatenation of each element's certificates, and fails exactly when
// one element fails or there are none.
func FuzzParseChain(f *testing.F) {
	root := testpki.NewRoot(f, "fuzz root")
	inter := root.NewIntermediate(f, "fuzz intermediate")
	leaf := inter.IssueLeaf(f, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/b"}})
	f.Add(string(leaf.CertPEM), string(inter.CertPEM), string(root.CertPEM), uint8(3))
	f.Add(string(leaf.FullChainPEM), "", "", uint8(1))
	f.Add(string(leaf.CertPEM), "", string(root.CertPEM), uint8(3))
	f.Add("", "", "", uint8(0))
	f.Add(string(leaf.CertPEM), "garbage", "", uint8(2))
	f.Fuzz(func(t *testing.T, a, b, c string, n uint8) {
		elems := []string{a, b, c}[:n%4]
		chain, err := ParseChain(elems)
		var want []*x509.Certificate
		var wantErr bool
		for _, e := range elems {
			certs, err := ParseCertificates([]byte(e))
			if err != nil {
				wantErr = true
				break
			}
			want = append(want, certs...)
		}
		if len(elems) == 0 {
			wantErr = true
		}
		if (err != nil) != wantErr {
			t.Fatalf("ParseChain error %v, want error %v", err, wantErr)
		}
		if err != nil {
			if len(elems) == 0 && !errors.Is(err, ErrNoCertificates) {
				t.Fatalf("empty chain: error %v is not ErrNoCertificates", err)
			}
			return
		}
		if len(chain) != len(want) {
			t.Fatalf("%d certificates, want %d", len(chain), len(want))
		}
		for i := range chain {
			if !chain[i].Equal(want[i]) {
				t.Fatalf("certificate %d differs from the element's", i)
			}
		}
	})
}

// FuzzVerify fuzzes the CA's answer to our CSR: the PEM elements it
// returns and the time of the check. Whatever it returns, Verify never
// panics, and a Bundle it accepts is for our key and exactly our ID,
// valid now, and its chain verifies to its roots.
func FuzzVerify(f *testing.F) {
	const uri = "spiffe://cluster.local/ns/a/sa/b"
	id, err := WorkloadID("cluster.local", "a", "b")
	if err != nil || id.String() != uri {
		f.Fatal(id, err)
	}
	root := testpki.NewRoot(f, "fuzz root")
	inter := root.NewIntermediate(f, "fuzz intermediate")
	key := testpki.NewKey(f)
	leaf := inter.IssueLeaf(f, testpki.LeafOptions{URIs: []string{uri}, Key: key})
	other := inter.IssueLeaf(f, testpki.LeafOptions{URIs: []string{uri}})
	wrongID := inter.IssueLeaf(f, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/a/sa/c"}, Key: key})
	otherRoot := testpki.NewRoot(f, "other root")
	// An Istio CA's answer: leaf, intermediate, root.
	f.Add(string(leaf.CertPEM), string(inter.CertPEM), string(root.CertPEM), int64(0), false)
	f.Add(string(leaf.ChainPEM), "", "", int64(0), true)
	f.Add(string(leaf.FullChainPEM), "", "", int64(2*3600), false)
	f.Add(string(leaf.CertPEM), string(inter.CertPEM), string(otherRoot.CertPEM), int64(0), false)
	f.Add(string(other.CertPEM), string(inter.CertPEM), string(root.CertPEM), int64(0), false)
	f.Add(string(wrongID.CertPEM), string(inter.CertPEM), string(root.CertPEM), int64(0), false)
	f.Add(string(root.CertPEM), "", "", int64(0), false)
	f.Add(string(leaf.CertPEM), string(root.CertPEM), string(inter.CertPEM), int64(-7200), false)
	base := time.Now()
	f.Fuzz(func(t *testing.T, a, b, c string, offsetSecs int64, appendRoot bool) {
		chain, err := ParseChain([]string{a, b, c}[:countNonEmpty(a, b, c)])
		if err != nil {
			return
		}
		if appendRoot {
			// The CA sends the root after the fuzzed elements.
			chain = append(chain, root.Cert)
		}
		now := base.Add(time.Duration(offsetSecs%(10*365*24*3600)) * time.Second)
		in := VerifyInput{Chain: chain, Key: key.Public(), ID: id, Now: now}
		bundle, err := Verify(in)
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Check == "" {
				t.Fatalf("Verify error %v is not a *VerifyError with a check", err)
			}
			if bundle != nil {
				t.Fatal("Verify returned a bundle with an error")
			}
			return
		}
		if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(bundle.Leaf.PublicKey) {
			t.Fatal("accepted a leaf for another key")
		}
		if len(bundle.Leaf.URIs) != 1 || bundle.Leaf.URIs[0].String() != uri {
			t.Fatalf("accepted a leaf with URIs %v", bundle.Leaf.URIs)
		}
		if bundle.Leaf.IsCA || now.Before(bundle.Leaf.NotBefore) || now.After(bundle.Leaf.NotAfter) {
			t.Fatal("accepted a CA leaf or one not valid now")
		}
		if len(bundle.Roots) == 0 {
			t.Fatal("accepted a chain without roots")
		}
		if err := VerifyChain(bundle.Leaf, bundle.Intermediates, bundle.Roots, now); err != nil {
			t.Fatalf("accepted bundle does not verify: %v", err)
		}
		servedChain, err := ParseCertificates(bundle.ChainPEM)
		if err != nil || len(servedChain) != 1+len(bundle.Intermediates) || !servedChain[0].Equal(bundle.Leaf) {
			t.Fatalf("ChainPEM is not the leaf and intermediates: %v", err)
		}
		if roots, err := ParseCertificates(bundle.RootsPEM); err != nil || len(roots) != len(bundle.Roots) {
			t.Fatalf("RootsPEM is not the roots: %v", err)
		}
	})
}

func countNonEmpty(elems ...string) int {
	n := len(elems)
	for n > 0 && elems[n-1] == "" {
		n--
	}
	return n
}

// FuzzParsePrivateKey feeds arbitrary bytes to ParsePrivateKey: it never
// panics, a key it returns survives EncodePrivateKey, and its errors
// never carry the key's bytes.
func FuzzParsePrivateKey(f *testing.F) {
	for _, kt := range []KeyType{ECDSAP256, ECDSAP384, RSA2048} {
		k, err := GenerateKey(kt)
		if err != nil {
			f.Fatal(err)
		}
		p, err := EncodePrivateKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(p))
		f.Add(append([]byte(p), "trailing"...))
	}
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n"))
	addPEMSeeds(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := ParsePrivateKey(data)
		if err != nil {
			if block, _ := pem.Decode(data); block != nil && len(block.Bytes) >= 12 {
				body := base64.StdEncoding.EncodeToString(block.Bytes)[:16]
				if strings.Contains(err.Error(), body) && !strings.Contains(block.Type, body) {
					t.Fatalf("error carries key bytes: %v", err)
				}
			}
			return
		}
		if key.Public() == nil {
			t.Fatal("key without public key")
		}
		p, err := EncodePrivateKey(key)
		if err != nil {
			return // a valid PEM key Go cannot write as PKCS#8 (e.g. an unusual curve)
		}
		back, err := ParsePrivateKey(p)
		if err != nil {
			t.Fatalf("re-encoded key does not parse: %v", err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Fatal("round trip changed the key")
		}
	})
}
