package devca_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// meshID is a workload identity in trust domain td.
func meshID(td string) string { return "spiffe://" + td + "/ns/shop/sa/web" }

// issue asks client for a certificate for id and returns the chain.
func issue(t *testing.T, client securityapi.IstioCertificateServiceClient, token, id string) (*ecdsa.PrivateKey, []string) {
	t.Helper()
	key := testpki.NewKey(t)
	resp, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
		Csr: csrPEM(t, csrSpec{key: key, uris: []string{id}}),
	})
	if err != nil {
		t.Fatalf("CreateCertificate(%s): %v", id, err)
	}
	return key.(*ecdsa.PrivateKey), resp.GetCertChain()
}

// servingChain makes a TLS handshake with addr trusting the roots in
// rootFile, as an agent given --ca-root-cert does, and returns what the
// server sent.
func servingChain(t *testing.T, addr string, roots *x509.CertPool) []*x509.Certificate {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	d := &tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("TLS handshake with the CA: %v", err)
	}
	defer func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates
}

// agentVerify checks a chain as the agent does before serving it
// (pki.Verify: the chain must end in its root), and that this root is one
// of the CA's root-cert.pem.
func agentVerify(t *testing.T, chain []string, key *ecdsa.PrivateKey, id string, rootPEM []byte) *pki.Bundle {
	t.Helper()
	certs, err := pki.ParseChain(chain)
	if err != nil {
		t.Fatalf("parse chain: %v", err)
	}
	roots, err := pki.ParseCertificates(rootPEM)
	if err != nil {
		t.Fatalf("parse roots: %v", err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatalf("parse id: %v", err)
	}
	parts := strings.Split(u.Path, "/") // "", "ns", namespace, "sa", service account
	pid, err := pki.WorkloadID(u.Host, parts[2], parts[4])
	if err != nil || pid.String() != id {
		t.Fatalf("workload id %q: %v", id, err)
	}
	b, err := pki.Verify(pki.VerifyInput{Chain: certs, Key: key.Public(), ID: pid, Now: time.Now()})
	if err != nil {
		t.Fatalf("pki.Verify: %v", err)
	}
	if !slices.ContainsFunc(roots, b.Roots[0].Equal) {
		t.Fatalf("the chain ends in %q, which is not in root-cert.pem", b.Roots[0].Subject)
	}
	return b
}

// TestNew_PluggedIn_TwoMeshes is the enterprise layout: one offline root,
// one intermediate per mesh, one CA per mesh serving over real TLS.
func TestNew_PluggedIn_TwoMeshes(t *testing.T) {
	rootDir := initRootDir(t, devca.RootConfig{Organization: "Example Corp"})
	sharedRoot := readCert(t, rootDir, "root-cert.pem")
	meshDirs := map[string]string{}
	for _, td := range []string{meshA, meshB} {
		meshDirs[td] = initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: td})
	}
	leaves := map[string]*x509.Certificate{}

	for _, td := range []string{meshA, meshB} {
		t.Run(td, func(t *testing.T) {
			dir := meshDirs[td]
			core, logs := observer.New(zapcore.InfoLevel)
			// dial trusts dir/root-cert.pem only, so the handshake proves
			// the serving certificate chains through the intermediate.
			ca, client, token := startCA(t, devca.Config{Dir: dir, TrustDomain: td, Logger: zap.New(core)})
			if ca.Mode() != devca.ModeIntermediate {
				t.Errorf("Mode = %q, want %q", ca.Mode(), devca.ModeIntermediate)
			}
			intermediate := readCert(t, dir, "ca-cert.pem")

			t.Run("start log names both subjects", func(t *testing.T) {
				lines := logs.FilterMessage("state loaded").AllUntimed()
				if len(lines) != 1 {
					t.Fatalf("%d \"state loaded\" lines, want 1", len(lines))
				}
				f := lines[0].ContextMap()
				if f["mode"] != "intermediate" || f["ca_subject"] != intermediate.Subject.String() || f["root_subject"] != sharedRoot.Subject.String() {
					t.Errorf("start log = %v, want mode intermediate with the intermediate's and root's subjects", f)
				}
			})

			t.Run("serving chain", func(t *testing.T) {
				sent := servingChain(t, serve(t, ca), rootPool(t, ca))
				if len(sent) != 2 || !sent[1].Equal(intermediate) {
					t.Fatalf("CA sent %d certificates, want its own and the intermediate", len(sent))
				}
				if err := sent[0].CheckSignatureFrom(intermediate); err != nil {
					t.Errorf("serving certificate not issued by the intermediate: %v", err)
				}
			})

			key, chain := issue(t, client, token, meshID(td))
			t.Run("chain is leaf, intermediate, root", func(t *testing.T) {
				if len(chain) != 3 {
					t.Fatalf("cert_chain has %d elements, want 3", len(chain))
				}
				if chain[1] != string(readFile(t, dir, "ca-cert.pem")) {
					t.Error("cert_chain[1] is not ca-cert.pem")
				}
				if chain[2] != string(readFile(t, rootDir, "root-cert.pem")) {
					t.Error("cert_chain[2] is not the shared root")
				}
				leaf := parseCert(t, chain[0])
				if len(leaf.URIs) != 1 || leaf.URIs[0].String() != meshID(td) {
					t.Errorf("leaf URIs = %v, want [%s]", leaf.URIs, meshID(td))
				}
				if err := verifyUnder(leaf, sharedRoot, parseCert(t, chain[1])); err != nil {
					t.Errorf("leaf does not verify against the shared root: %v", err)
				}
				leaves[td] = leaf
			})

			t.Run("agent verification", func(t *testing.T) {
				b := agentVerify(t, chain, key, meshID(td), ca.RootPEM())
				if len(b.Intermediates) != 1 || !b.Intermediates[0].Equal(intermediate) {
					t.Errorf("bundle intermediates = %d, want the mesh intermediate", len(b.Intermediates))
				}
				if n := bytes.Count(b.ChainPEM, []byte("BEGIN CERTIFICATE")); n != 2 {
					t.Errorf("served chain has %d certificates, want leaf and intermediate (not the root)", n)
				}
				if len(b.Roots) != 1 || !b.Roots[0].Equal(sharedRoot) {
					t.Error("bundle roots are not the shared root")
				}
			})

			t.Run("other mesh's identity refused", func(t *testing.T) {
				other := meshB
				if td == meshB {
					other = meshA
				}
				_, err := client.CreateCertificate(authCtx(t, token), &securityapi.IstioCertificateRequest{
					Csr: csrPEM(t, csrSpec{uris: []string{meshID(other)}}),
				})
				if err == nil {
					t.Error("CA signed an identity of the other mesh")
				}
			})
		})
	}

	t.Run("meshes trust each other through the shared root", func(t *testing.T) {
		for td, leaf := range leaves {
			for otherTD, dir := range meshDirs {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(readFile(t, dir, "root-cert.pem"))
				inter := x509.NewCertPool()
				inter.AddCert(readCert(t, meshDirs[td], "ca-cert.pem"))
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err != nil {
					t.Errorf("leaf of %s does not verify with %s's root-cert.pem: %v", td, otherTD, err)
				}
			}
		}
	})
}

func TestNew_PluggedIn_CreatesOnlyTheToken(t *testing.T) {
	dir := initMeshDir(t, initRootDir(t, devca.RootConfig{}), devca.IntermediateConfig{TrustDomain: meshA})
	before := snapshotDir(t, dir)
	first := newCA(t, devca.Config{Dir: dir, TrustDomain: meshA})
	if got, want := dirEntries(t, dir), "ca-cert.pem ca-key.pem cert-chain.pem root-cert.pem token"; got != want {
		t.Fatalf("dir holds %q, want %q", got, want)
	}
	checkMode(t, first.TokenPath(), 0o600)
	if raw, err := hex.DecodeString(readToken(t, first)); err != nil || len(raw) != 32 {
		t.Errorf("token is not 32 hex-encoded bytes (err %v)", err)
	}
	token := readFile(t, dir, "token")
	removeFile(t, dir, "token")
	if after := snapshotDir(t, dir); after != before {
		t.Error("New changed a plugged-in file")
	}
	writeFile(t, dir, "token", token)
	second := newCA(t, devca.Config{Dir: dir, TrustDomain: meshA})
	if readToken(t, second) != readToken(t, first) {
		t.Error("token changed across restart")
	}
	if !bytes.Equal(second.RootPEM(), readFile(t, dir, "root-cert.pem")) {
		t.Error("RootPEM is not root-cert.pem")
	}
}

// TestNew_PluggedIn_Layouts covers the other shapes Istio's files take.
func TestNew_PluggedIn_Layouts(t *testing.T) {
	tests := []struct {
		name string
		// prepare writes the plugged-in files into dir and returns the
		// trust domain to run the CA for.
		prepare   func(t *testing.T, dir string) string
		wantChain int
		wantMode  devca.Mode
	}{
		{
			name: "cert-chain.pem without the root",
			prepare: func(t *testing.T, dir string) string {
				initMeshDir(t, initRootDir(t, devca.RootConfig{}), devca.IntermediateConfig{Dir: dir, TrustDomain: meshA})
				writeFile(t, dir, "cert-chain.pem", readFile(t, dir, "ca-cert.pem"))
				return meshA
			},
			wantChain: 3,
			wantMode:  devca.ModeIntermediate,
		},
		{
			name: "SEC 1 key as older Istio tooling writes it",
			prepare: func(t *testing.T, dir string) string {
				initMeshDir(t, initRootDir(t, devca.RootConfig{}), devca.IntermediateConfig{Dir: dir, TrustDomain: meshA})
				der, err := x509.MarshalECPrivateKey(readKey(t, dir, "ca-key.pem").(*ecdsa.PrivateKey))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "ca-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
				return meshA
			},
			wantChain: 3,
			wantMode:  devca.ModeIntermediate,
		},
		{
			name: "root-cert.pem with a second root",
			prepare: func(t *testing.T, dir string) string {
				initMeshDir(t, initRootDir(t, devca.RootConfig{}), devca.IntermediateConfig{Dir: dir, TrustDomain: meshA})
				other := testpki.NewRoot(t, "next root")
				writeFile(t, dir, "root-cert.pem", append(other.CertPEM, readFile(t, dir, "root-cert.pem")...))
				return meshA
			},
			wantChain: 3,
			wantMode:  devca.ModeIntermediate,
		},
		{
			name: "two intermediates",
			prepare: func(t *testing.T, dir string) string {
				root := testpki.NewRoot(t, "root")
				policy := root.NewIntermediate(t, "policy CA")
				issuing := policy.NewIntermediate(t, "issuing CA")
				writePlugged(t, dir, issuing, [][]byte{issuing.CertPEM, policy.CertPEM, root.CertPEM}, root.CertPEM)
				return "cluster.local"
			},
			wantChain: 4,
			wantMode:  devca.ModeIntermediate,
		},
		{
			name: "the root plugged in as ca-cert.pem",
			prepare: func(t *testing.T, dir string) string {
				root := testpki.NewRoot(t, "root")
				writePlugged(t, dir, root, [][]byte{root.CertPEM}, root.CertPEM)
				return "cluster.local"
			},
			wantChain: 2,
			wantMode:  devca.ModeSelfSignedRoot,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "mesh")
			td := tc.prepare(t, dir)
			ca, client, token := startCA(t, devca.Config{Dir: dir, TrustDomain: td})
			if ca.Mode() != tc.wantMode {
				t.Errorf("Mode = %q, want %q", ca.Mode(), tc.wantMode)
			}
			key, chain := issue(t, client, token, meshID(td))
			if len(chain) != tc.wantChain {
				t.Fatalf("cert_chain has %d elements, want %d", len(chain), tc.wantChain)
			}
			if chain[1] != string(readFile(t, dir, "ca-cert.pem")) {
				t.Error("cert_chain[1] is not ca-cert.pem")
			}
			if last := parseCert(t, chain[len(chain)-1]); !bytes.Contains(readFile(t, dir, "root-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: last.Raw})) {
				t.Error("cert_chain does not end with a root from root-cert.pem")
			}
			agentVerify(t, chain, key, meshID(td), ca.RootPEM())
		})
	}
}

// writePlugged writes ca as ca-cert.pem and ca-key.pem, chain as
// cert-chain.pem and roots as root-cert.pem into dir.
func writePlugged(t *testing.T, dir string, ca *testpki.CA, chain [][]byte, roots []byte) {
	t.Helper()
	keyPEM, err := pki.EncodePrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "ca-cert.pem", ca.CertPEM)
	writeFile(t, dir, "ca-key.pem", keyPEM)
	writeFile(t, dir, "cert-chain.pem", bytes.Join(chain, nil))
	writeFile(t, dir, "root-cert.pem", roots)
}

func TestNew_PluggedInBadFiles(t *testing.T) {
	now := time.Now()
	// signCA signs a CA certificate for a new key with the given key usage
	// under issuer and writes it as ca-cert.pem with its key.
	signCA := func(t *testing.T, dir string, issuer *x509.Certificate, issuerKey any, usage x509.KeyUsage) {
		t.Helper()
		key := testpki.NewKey(t)
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(7),
			Subject:               pkix.Name{CommonName: "sub CA"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(time.Hour),
			KeyUsage:              usage,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, err := pki.EncodePrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir, "ca-cert.pem", testpki.EncodeCert(der))
		writeFile(t, dir, "ca-key.pem", keyPEM)
	}
	tests := []struct {
		name string
		// breakIt damages a good plugged-in set in dir, made for meshA under
		// the root in rootDir, and may return another trust domain to run
		// the CA for.
		breakIt func(t *testing.T, dir, rootDir string) string
		want    []string
	}{
		{
			name: "key does not match ca-cert",
			breakIt: func(t *testing.T, dir, _ string) string {
				keyPEM, err := pki.EncodePrivateKey(testpki.NewKey(t))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "ca-key.pem", keyPEM)
				return ""
			},
			want: []string{"ca-key.pem: private key does not match", "in ca-cert.pem"},
		},
		{
			name: "corrupt key",
			breakIt: func(t *testing.T, dir, _ string) string {
				writeFile(t, dir, "ca-key.pem", []byte("garbage"))
				return ""
			},
			want: []string{"ca-key.pem:", "no PEM block"},
		},
		{
			name: "cert-chain does not start with ca-cert",
			breakIt: func(t *testing.T, dir, rootDir string) string {
				other := initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: meshB})
				writeFile(t, dir, "cert-chain.pem", readFile(t, other, "cert-chain.pem"))
				return ""
			},
			want: []string{"cert-chain.pem: starts with", "not with the certificate in ca-cert.pem"},
		},
		{
			name: "cert-chain ends in a root not in root-cert.pem",
			breakIt: func(t *testing.T, dir, _ string) string {
				writeFile(t, dir, "root-cert.pem", testpki.NewRoot(t, "other root").CertPEM)
				return ""
			},
			want: []string{"cert-chain.pem ends in root", "not in root-cert.pem"},
		},
		{
			name: "chain does not verify to root-cert.pem",
			breakIt: func(t *testing.T, dir, _ string) string {
				writeFile(t, dir, "cert-chain.pem", readFile(t, dir, "ca-cert.pem"))
				writeFile(t, dir, "root-cert.pem", testpki.NewRoot(t, "other root").CertPEM)
				return ""
			},
			want: []string{"cert-chain.pem does not verify to root-cert.pem"},
		},
		{
			name:    "missing cert-chain.pem",
			breakIt: func(t *testing.T, dir, _ string) string { removeFile(t, dir, "cert-chain.pem"); return "" },
			want:    []string{"incomplete plugged-in CA: missing cert-chain.pem (found ca-cert.pem, ca-key.pem, root-cert.pem)"},
		},
		{
			name:    "missing ca-key.pem",
			breakIt: func(t *testing.T, dir, _ string) string { removeFile(t, dir, "ca-key.pem"); return "" },
			want:    []string{"incomplete plugged-in CA: missing ca-key.pem"},
		},
		{
			name: "cert-chain.pem without ca-cert.pem and root-cert.pem",
			breakIt: func(t *testing.T, dir, _ string) string {
				removeFile(t, dir, "ca-cert.pem")
				removeFile(t, dir, "root-cert.pem")
				return ""
			},
			want: []string{"incomplete plugged-in CA: missing ca-cert.pem, root-cert.pem"},
		},
		{
			name: "expired intermediate",
			breakIt: func(t *testing.T, dir, _ string) string {
				old := initRootDir(t, devca.RootConfig{Clock: clocktest.New(now.AddDate(-3, 0, 0))})
				expired := initMeshDir(t, old, devca.IntermediateConfig{TrustDomain: meshA, Clock: clocktest.New(now.AddDate(-2, 0, 0))})
				for _, name := range []string{"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"} {
					writeFile(t, dir, name, readFile(t, expired, name))
				}
				return ""
			},
			want: []string{"ca-cert.pem: ca certificate is not valid now"},
		},
		{
			name: "ca-cert is not a CA",
			breakIt: func(t *testing.T, dir, _ string) string {
				leaf := testpki.NewRoot(t, "other").IssueLeaf(t, testpki.LeafOptions{URIs: []string{meshID(meshA)}})
				writeFile(t, dir, "ca-cert.pem", leaf.CertPEM)
				writeFile(t, dir, "ca-key.pem", leaf.KeyPEM)
				return ""
			},
			want: []string{"ca-cert.pem: certificate", "is not a CA"},
		},
		{
			name: "ca-cert may not sign certificates",
			breakIt: func(t *testing.T, dir, rootDir string) string {
				signCA(t, dir, readCert(t, rootDir, "root-cert.pem"), readKey(t, rootDir, "root-key.pem"), x509.KeyUsageDigitalSignature)
				return ""
			},
			want: []string{"ca-cert.pem: certificate", "lacks the cert sign key usage"},
		},
		{
			name: "path length of the intermediate exceeded",
			breakIt: func(t *testing.T, dir, rootDir string) string {
				mesh := readCert(t, dir, "ca-cert.pem")
				signCA(t, dir, mesh, readKey(t, dir, "ca-key.pem"), x509.KeyUsageCertSign)
				writeFile(t, dir, "cert-chain.pem", append(append(readFile(t, dir, "ca-cert.pem"), testpki.EncodeCert(mesh.Raw)...), readFile(t, rootDir, "root-cert.pem")...))
				return ""
			},
			// x509 counts the CAs below a path length limit on the way to a
			// leaf, so the workload check is what catches it.
			want: []string{"ca-cert.pem: a workload certificate", "too many intermediates for path length constraint"},
		},
		{
			name:    "trust domain outside the name constraint",
			breakIt: func(t *testing.T, _, _ string) string { return meshB },
			want:    []string{"ca-cert.pem: a workload certificate for trust domain \"mesh-b.example\"", "not permitted", `permit URIs in ["mesh-a.example"] only`},
		},
		{
			name: "corrupt cert-chain.pem",
			breakIt: func(t *testing.T, dir, _ string) string {
				writeFile(t, dir, "cert-chain.pem", []byte("garbage"))
				return ""
			},
			want: []string{"cert-chain.pem: parse certificates"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rootDir := initRootDir(t, devca.RootConfig{})
			dir := initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: meshA})
			td := tc.breakIt(t, dir, rootDir)
			if td == "" {
				td = meshA
			}
			before := snapshotDir(t, dir)

			ca, err := devca.New(devca.Config{Dir: dir, TrustDomain: td})
			if err == nil {
				t.Fatalf("New succeeded on broken files (mode %s)", ca.Mode())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if after := snapshotDir(t, dir); after != before {
				t.Errorf("New changed the dir:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestNew_SelfSignedMode(t *testing.T) {
	ca := newCA(t, devca.Config{})
	if ca.Mode() != devca.ModeSelfSignedRoot {
		t.Errorf("Mode = %q, want %q", ca.Mode(), devca.ModeSelfSignedRoot)
	}
}
