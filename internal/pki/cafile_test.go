package pki

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdsagent/sdsagent/internal/testpki"
)

// TestReadCARootFileNamesTheFileOnce checks the errors both CA clients
// show: the path once, and why.
func TestReadCARootFileNamesTheFileOnce(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	_, err := ReadCARootFile(missing)
	if !errors.Is(err, fs.ErrNotExist) || strings.Count(err.Error(), missing) != 1 {
		t.Errorf("missing file: %v; want fs.ErrNotExist naming %s once", err, missing)
	}
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCARootFile(empty); !errors.Is(err, ErrNoCertificates) || !strings.Contains(err.Error(), "read CA root file "+empty) {
		t.Errorf("empty file: %v; want ErrNoCertificates naming the file", err)
	}
}

// TestVerifyServerChain checks the CA clients' server check: name,
// roots, intermediates from the chain, and an empty chain.
func TestVerifyServerChain(t *testing.T) {
	root := testpki.NewRoot(t, "ca root")
	inter := root.NewIntermediate(t, "ca intermediate")
	other := testpki.NewRoot(t, "other root")
	leaf := inter.IssueLeaf(t, testpki.LeafOptions{DNSNames: []string{"istiod.istio-system.svc"}})
	chain := []*x509.Certificate{leaf.Cert, inter.Cert}
	if err := VerifyServerChain(chain, []*x509.Certificate{root.Cert}, "istiod.istio-system.svc"); err != nil {
		t.Errorf("good chain: %v", err)
	}
	for name, err := range map[string]error{
		"wrong name":          VerifyServerChain(chain, []*x509.Certificate{root.Cert}, "evil.example"),
		"other root":          VerifyServerChain(chain, []*x509.Certificate{other.Cert}, "istiod.istio-system.svc"),
		"no intermediate":     VerifyServerChain(chain[:1], []*x509.Certificate{root.Cert}, "istiod.istio-system.svc"),
		"no roots configured": VerifyServerChain(chain, nil, "istiod.istio-system.svc"),
	} {
		if err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	if err := VerifyServerChain(nil, []*x509.Certificate{root.Cert}, "x"); !errors.Is(err, ErrNoCertificates) {
		t.Errorf("empty chain: %v, want ErrNoCertificates", err)
	}
}
