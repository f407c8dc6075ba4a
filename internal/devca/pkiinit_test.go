package devca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// Trust domains of the two meshes sharing one root.
const (
	meshA = "mesh-a.example"
	meshB = "mesh-b.example"
)

var oidNameConstraints = asn1.ObjectIdentifier{2, 5, 29, 30}

// initRootDir runs InitRoot into a new directory and returns it.
func initRootDir(t *testing.T, cfg devca.RootConfig) string {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "root")
	}
	if err := devca.InitRoot(cfg); err != nil {
		t.Fatalf("InitRoot: %v", err)
	}
	return cfg.Dir
}

// initMeshDir runs InitIntermediate for cfg.TrustDomain under the root in
// rootDir into a new directory and returns it.
func initMeshDir(t *testing.T, rootDir string, cfg devca.IntermediateConfig) string {
	t.Helper()
	cfg.RootDir = rootDir
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), cfg.TrustDomain)
	}
	if err := devca.InitIntermediate(cfg); err != nil {
		t.Fatalf("InitIntermediate(%s): %v", cfg.TrustDomain, err)
	}
	return cfg.Dir
}

// readCert reads a file holding exactly one PEM certificate.
func readCert(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	return parseCert(t, string(readFile(t, dir, name)))
}

// readKey reads a PEM private key.
func readKey(t *testing.T, dir, name string) crypto.Signer {
	t.Helper()
	key, err := pki.ParsePrivateKey(readFile(t, dir, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return key
}

// checkMode fails unless path has exactly the permission bits want.
func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %v, want %v", path, got, want)
	}
}

// dirEntries lists the names in dir, sorted.
func dirEntries(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read dir: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// signRogue signs a leaf for uri with key as issuer, bypassing any CA
// software: what someone holding a stolen intermediate key can do.
func signRogue(t *testing.T, issuer *x509.Certificate, key crypto.Signer, uri string) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatalf("parse %q: %v", uri, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, testpki.NewKey(t).Public(), key)
	if err != nil {
		t.Fatalf("sign rogue leaf: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse rogue leaf: %v", err)
	}
	return leaf
}

// verifyUnder verifies leaf against root through intermediates, as Go's
// TLS stack would.
func verifyUnder(leaf, root *x509.Certificate, intermediates ...*x509.Certificate) error {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

func TestInitRoot(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	tests := []struct {
		name    string
		cfg     devca.RootConfig
		wantCN  string
		wantO   []string
		wantTTL time.Duration
		checkPK func(pub crypto.PublicKey) bool
	}{
		{
			name:    "defaults",
			wantCN:  "sdsagent root CA",
			wantTTL: 87600 * time.Hour,
			checkPK: func(pub crypto.PublicKey) bool {
				k, ok := pub.(*ecdsa.PublicKey)
				return ok && k.Curve == elliptic.P256()
			},
		},
		{
			name:    "ecdsa-p384 with names and ttl",
			cfg:     devca.RootConfig{CommonName: "Example Root", Organization: "Example Corp", TTL: 1000 * time.Hour, KeyType: pki.ECDSAP384},
			wantCN:  "Example Root",
			wantO:   []string{"Example Corp"},
			wantTTL: 1000 * time.Hour,
			checkPK: func(pub crypto.PublicKey) bool {
				k, ok := pub.(*ecdsa.PublicKey)
				return ok && k.Curve == elliptic.P384()
			},
		},
		{
			name:    "rsa-2048",
			cfg:     devca.RootConfig{KeyType: pki.RSA2048},
			wantCN:  "sdsagent root CA",
			wantTTL: 87600 * time.Hour,
			checkPK: func(pub crypto.PublicKey) bool {
				k, ok := pub.(*rsa.PublicKey)
				return ok && k.N.BitLen() == 2048
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Dir = filepath.Join(t.TempDir(), "offline", "root")
			cfg.Clock = clocktest.New(start)
			dir := initRootDir(t, cfg)

			if got, want := dirEntries(t, dir), "root-cert.pem root-key.pem"; got != want {
				t.Errorf("dir holds %q, want %q", got, want)
			}
			checkMode(t, dir, 0o700)
			checkMode(t, filepath.Join(dir, "root-key.pem"), 0o600)
			checkMode(t, filepath.Join(dir, "root-cert.pem"), 0o644)

			root := readCert(t, dir, "root-cert.pem")
			if root.Subject.CommonName != tc.wantCN || strings.Join(root.Subject.Organization, ",") != strings.Join(tc.wantO, ",") {
				t.Errorf("subject = %q, want CN %q O %q", root.Subject, tc.wantCN, tc.wantO)
			}
			if !root.IsCA || !root.BasicConstraintsValid || root.MaxPathLen != 1 || root.MaxPathLenZero {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d, want a CA with path length 1",
					root.IsCA, root.BasicConstraintsValid, root.MaxPathLen)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; root.KeyUsage != want {
				t.Errorf("KeyUsage = %v, want %v", root.KeyUsage, want)
			}
			if len(root.SubjectKeyId) == 0 {
				t.Error("root has no subject key identifier")
			}
			if err := root.CheckSignatureFrom(root); err != nil {
				t.Errorf("root is not self-signed: %v", err)
			}
			if !tc.checkPK(root.PublicKey) {
				t.Errorf("root key is %T, not the requested type", root.PublicKey)
			}
			if want := start.Add(tc.wantTTL); !root.NotAfter.Equal(want) {
				t.Errorf("NotAfter = %s, want %s", root.NotAfter, want)
			}
			if root.NotBefore.After(start) {
				t.Errorf("NotBefore = %s is after creation at %s", root.NotBefore, start)
			}
			key := readKey(t, dir, "root-key.pem")
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(root.PublicKey) {
				t.Error("root-key.pem is not the key of root-cert.pem")
			}
		})
	}
}

func TestInitRoot_RefusesToOverwrite(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		want    []string
	}{
		{
			name:    "both files",
			prepare: func(t *testing.T, dir string) { initRootDir(t, devca.RootConfig{Dir: dir}) },
			want:    []string{"root-cert.pem, root-key.pem already in", "refusing to overwrite"},
		},
		{
			name: "only the key",
			prepare: func(t *testing.T, dir string) {
				initRootDir(t, devca.RootConfig{Dir: dir})
				removeFile(t, dir, "root-cert.pem")
			},
			want: []string{"root-key.pem already in", "refusing to overwrite"},
		},
		{
			name: "only the certificate",
			prepare: func(t *testing.T, dir string) {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "root-cert.pem", []byte("someone else's root"))
			},
			want: []string{"root-cert.pem already in", "refusing to overwrite"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "root")
			tc.prepare(t, dir)
			before := snapshotDir(t, dir)
			err := devca.InitRoot(devca.RootConfig{Dir: dir})
			if err == nil {
				t.Fatal("InitRoot succeeded over existing files")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if after := snapshotDir(t, dir); after != before {
				t.Errorf("InitRoot changed the dir:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestInitRoot_BadConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "root")
	tests := []struct {
		name string
		cfg  devca.RootConfig
		want string
	}{
		{name: "no dir", cfg: devca.RootConfig{}, want: "dir is required"},
		{name: "negative ttl", cfg: devca.RootConfig{Dir: dir, TTL: -time.Hour}, want: "TTL -1h0m0s is negative"},
		{name: "unknown key type", cfg: devca.RootConfig{Dir: dir, KeyType: "dsa-1024"}, want: `unknown key type "dsa-1024"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := devca.InitRoot(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("InitRoot error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bad config created %s (stat: %v)", dir, err)
	}
}

func TestInitIntermediate(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	rootDir := initRootDir(t, devca.RootConfig{Clock: clocktest.New(start)})
	root := readCert(t, rootDir, "root-cert.pem")

	tests := []struct {
		name           string
		cfg            devca.IntermediateConfig
		wantConstraint bool
		wantCN         string
	}{
		{name: "name constrained by default", cfg: devca.IntermediateConfig{TrustDomain: meshA}, wantConstraint: true, wantCN: "sdsagent intermediate CA"},
		{name: "without name constraint", cfg: devca.IntermediateConfig{TrustDomain: meshB, NoNameConstraint: true, CommonName: "mesh b CA", KeyType: pki.RSA2048}, wantCN: "mesh b CA"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Clock = clocktest.New(start)
			dir := initMeshDir(t, rootDir, cfg)

			if got, want := dirEntries(t, dir), "ca-cert.pem ca-key.pem cert-chain.pem root-cert.pem"; got != want {
				t.Errorf("dir holds %q, want %q", got, want)
			}
			checkMode(t, dir, 0o700)
			checkMode(t, filepath.Join(dir, "ca-key.pem"), 0o600)
			for _, name := range []string{"ca-cert.pem", "root-cert.pem", "cert-chain.pem"} {
				checkMode(t, filepath.Join(dir, name), 0o644)
			}
			if !bytes.Equal(readFile(t, dir, "root-cert.pem"), readFile(t, rootDir, "root-cert.pem")) {
				t.Error("root-cert.pem is not a copy of the root")
			}
			wantChain := append(readFile(t, dir, "ca-cert.pem"), readFile(t, rootDir, "root-cert.pem")...)
			if !bytes.Equal(readFile(t, dir, "cert-chain.pem"), wantChain) {
				t.Error("cert-chain.pem is not ca-cert.pem followed by the root")
			}

			ca := readCert(t, dir, "ca-cert.pem")
			key := readKey(t, dir, "ca-key.pem")
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(ca.PublicKey) {
				t.Error("ca-key.pem is not the key of ca-cert.pem")
			}
			if err := ca.CheckSignatureFrom(root); err != nil {
				t.Errorf("intermediate not signed by the root: %v", err)
			}
			if ca.Subject.CommonName != tc.wantCN || len(ca.Subject.Organization) != 1 || ca.Subject.Organization[0] != cfg.TrustDomain {
				t.Errorf("subject = %q, want CN %q O %q", ca.Subject, tc.wantCN, cfg.TrustDomain)
			}
			if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d MaxPathLenZero=%v, want a CA with path length 0",
					ca.IsCA, ca.BasicConstraintsValid, ca.MaxPathLen, ca.MaxPathLenZero)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature; ca.KeyUsage != want {
				t.Errorf("KeyUsage = %v, want %v", ca.KeyUsage, want)
			}
			if len(ca.SubjectKeyId) == 0 || !bytes.Equal(ca.AuthorityKeyId, root.SubjectKeyId) {
				t.Errorf("key ids: subject %x, authority %x; want a subject key id and the root's %x", ca.SubjectKeyId, ca.AuthorityKeyId, root.SubjectKeyId)
			}
			if want := start.Add(8760 * time.Hour); !ca.NotAfter.Equal(want) {
				t.Errorf("NotAfter = %s, want %s (a year)", ca.NotAfter, want)
			}
			if ca.NotBefore.Before(root.NotBefore) || ca.NotBefore.After(start) {
				t.Errorf("NotBefore = %s, want between the root's %s and creation at %s", ca.NotBefore, root.NotBefore, start)
			}

			critical, present := false, false
			for _, ext := range ca.Extensions {
				if ext.Id.Equal(oidNameConstraints) {
					present, critical = true, ext.Critical
				}
			}
			if !tc.wantConstraint {
				if present {
					t.Errorf("name constraints present: permitted %q", ca.PermittedURIDomains)
				}
				return
			}
			if !present || !critical {
				t.Errorf("name constraints extension present=%v critical=%v, want a critical one", present, critical)
			}
			if got := ca.PermittedURIDomains; len(got) != 1 || got[0] != cfg.TrustDomain {
				t.Errorf("PermittedURIDomains = %q, want [%s]", got, cfg.TrustDomain)
			}
			if got := ca.ExcludedURIDomains; len(got) != 1 || got[0] != "."+cfg.TrustDomain {
				t.Errorf("ExcludedURIDomains = %q, want [.%s]", got, cfg.TrustDomain)
			}
			if n := len(ca.PermittedDNSDomains) + len(ca.ExcludedDNSDomains) + len(ca.PermittedIPRanges) + len(ca.PermittedEmailAddresses); n != 0 {
				t.Errorf("%d constraints on other name types; the CA's serving certificate needs DNS names and IPs", n)
			}
		})
	}
}

func TestInitIntermediate_ValidityWithinRoot(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	rootDir := initRootDir(t, devca.RootConfig{TTL: 48 * time.Hour, Clock: clocktest.New(start)})
	dir := initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: meshA, TTL: 8760 * time.Hour, Clock: clocktest.New(start.Add(time.Hour))})
	root, ca := readCert(t, rootDir, "root-cert.pem"), readCert(t, dir, "ca-cert.pem")
	if !ca.NotAfter.Equal(root.NotAfter) {
		t.Errorf("intermediate NotAfter = %s, want the root's %s", ca.NotAfter, root.NotAfter)
	}
}

func TestInitIntermediate_Errors(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name string
		// setup returns the config to run; dirs are fresh per case.
		setup func(t *testing.T, rootDir, dir string) devca.IntermediateConfig
		want  []string
	}{
		{
			name: "existing file in dir",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "ca-key.pem", []byte("an existing key"))
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir, TrustDomain: meshA}
			},
			want: []string{"ca-key.pem already in", "refusing to overwrite"},
		},
		{
			name: "existing set in dir",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				initMeshDir(t, rootDir, devca.IntermediateConfig{Dir: dir, TrustDomain: meshA})
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir, TrustDomain: meshA}
			},
			want: []string{"ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem already in", "refusing to overwrite"},
		},
		{
			name: "dir is the root dir",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				return devca.IntermediateConfig{RootDir: rootDir, Dir: rootDir + "/.", TrustDomain: meshA}
			},
			want: []string{"is the root dir"},
		},
		{
			name: "no root in root dir",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				return devca.IntermediateConfig{RootDir: dir, Dir: filepath.Join(dir, "mesh"), TrustDomain: meshA}
			},
			want: []string{"root certificate", "root-cert.pem", "no such file"},
		},
		{
			name: "root key does not match",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				other := initRootDir(t, devca.RootConfig{})
				writeFile(t, rootDir, "root-key.pem", readFile(t, other, "root-key.pem"))
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir, TrustDomain: meshA}
			},
			want: []string{"root-key.pem", "does not match", "root-cert.pem"},
		},
		{
			name: "root expired",
			setup: func(t *testing.T, _, dir string) devca.IntermediateConfig {
				old := initRootDir(t, devca.RootConfig{TTL: 24 * time.Hour, Clock: clocktest.New(now.Add(-48 * time.Hour))})
				return devca.IntermediateConfig{RootDir: old, Dir: dir, TrustDomain: meshA}
			},
			want: []string{"root-cert.pem", "not valid now"},
		},
		{
			name: "root forbids intermediates",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				key := testpki.NewKey(t)
				tmpl := &x509.Certificate{
					SerialNumber:          big.NewInt(1),
					Subject:               pkix.Name{CommonName: "leaf-only root"},
					NotBefore:             now.Add(-time.Hour),
					NotAfter:              now.Add(time.Hour),
					KeyUsage:              x509.KeyUsageCertSign,
					BasicConstraintsValid: true,
					IsCA:                  true,
					MaxPathLenZero:        true,
				}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
				if err != nil {
					t.Fatal(err)
				}
				keyPEM, err := pki.EncodePrivateKey(key)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, rootDir, "root-cert.pem", testpki.EncodeCert(der))
				writeFile(t, rootDir, "root-key.pem", keyPEM)
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir, TrustDomain: meshA}
			},
			want: []string{"root-cert.pem", "path length 0"},
		},
		{
			name: "no trust domain",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir}
			},
			want: []string{"trust domain is required"},
		},
		{
			name: "invalid trust domain",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir, TrustDomain: "Mesh-A"}
			},
			want: []string{`trust domain "Mesh-A"`},
		},
		{
			name: "negative ttl",
			setup: func(t *testing.T, rootDir, dir string) devca.IntermediateConfig {
				return devca.IntermediateConfig{RootDir: rootDir, Dir: dir, TrustDomain: meshA, TTL: -time.Hour}
			},
			want: []string{"TTL -1h0m0s is negative"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rootDir := initRootDir(t, devca.RootConfig{})
			dir := filepath.Join(t.TempDir(), "mesh")
			cfg := tc.setup(t, rootDir, dir)
			rootBefore := snapshotDir(t, rootDir)
			var dirBefore string
			if _, err := os.Stat(dir); err == nil {
				dirBefore = snapshotDir(t, dir)
			}

			err := devca.InitIntermediate(cfg)
			if err == nil {
				t.Fatal("InitIntermediate succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if after := snapshotDir(t, rootDir); after != rootBefore {
				t.Error("InitIntermediate changed the root dir")
			}
			if dirBefore != "" {
				if after := snapshotDir(t, dir); after != dirBefore {
					t.Errorf("InitIntermediate changed the dir:\nbefore %s\nafter  %s", dirBefore, after)
				}
			} else if _, err := os.Stat(filepath.Join(dir, "ca-cert.pem")); err == nil {
				t.Error("InitIntermediate wrote ca-cert.pem although it failed")
			}
		})
	}
}

// TestNameConstraints plays a compromised mesh CA: its key signs leaves
// directly, without `sdsagent ca`'s checks. With the name constraint,
// only its own trust domain verifies against the shared root.
func TestNameConstraints(t *testing.T) {
	rootDir := initRootDir(t, devca.RootConfig{})
	root := readCert(t, rootDir, "root-cert.pem")
	constrained := initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: meshA})
	open := initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: meshA, NoNameConstraint: true, Dir: filepath.Join(t.TempDir(), "open")})

	tests := []struct {
		name            string
		uri             string
		constrainedOK   bool // verifies when issued by the constrained intermediate
		unconstrainedOK bool
	}{
		{name: "own trust domain", uri: "spiffe://mesh-a.example/ns/shop/sa/web", constrainedOK: true, unconstrainedOK: true},
		{name: "other mesh's trust domain", uri: "spiffe://mesh-b.example/ns/shop/sa/web", unconstrainedOK: true},
		{name: "subdomain of own trust domain", uri: "spiffe://evil.mesh-a.example/ns/shop/sa/web", unconstrainedOK: true},
		{name: "parent of own trust domain", uri: "spiffe://example/ns/shop/sa/web", unconstrainedOK: true},
		{name: "look-alike trust domain", uri: "spiffe://xmesh-a.example/ns/shop/sa/web", unconstrainedOK: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []struct {
				dir    string
				wantOK bool
			}{{constrained, tc.constrainedOK}, {open, tc.unconstrainedOK}} {
				ca := readCert(t, v.dir, "ca-cert.pem")
				leaf := signRogue(t, ca, readKey(t, v.dir, "ca-key.pem"), tc.uri)
				err := verifyUnder(leaf, root, ca)
				constrainedCA := len(ca.PermittedURIDomains) > 0
				if v.wantOK {
					if err != nil {
						t.Errorf("constrained=%v: leaf for %s does not verify: %v", constrainedCA, tc.uri, err)
					}
					continue
				}
				var invalid x509.CertificateInvalidError
				if !errors.As(err, &invalid) || invalid.Reason != x509.CANotAuthorizedForThisName {
					t.Errorf("constrained=%v: leaf for %s: verify error %v, want CANotAuthorizedForThisName", constrainedCA, tc.uri, err)
				}
			}
		})
	}
}
