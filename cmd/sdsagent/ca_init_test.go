package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdsagent/sdsagent/internal/caclient"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/internal/testtools"
)

// runCmd runs sdsagent in-process and returns its exit code and output.
func runCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code := run(context.Background(), args, func(string) string { return "" }, &out, &out)
	return code, out.String()
}

// runOK runs sdsagent in-process and fails the test unless it exits 0.
func runOK(t *testing.T, args ...string) {
	t.Helper()
	if code, out := runCmd(t, args...); code != 0 {
		t.Fatalf("sdsagent %s exited %d:\n%s", strings.Join(args, " "), code, out)
	}
}

// enterprisePKI is an offline root and one intermediate per trust domain,
// made with `sdsagent ca init-root` and `sdsagent ca init-intermediate`.
type enterprisePKI struct {
	rootDir string
	meshDir map[string]string
}

func newEnterprisePKI(t *testing.T, trustDomains ...string) *enterprisePKI {
	t.Helper()
	base := tempDir(t)
	p := &enterprisePKI{rootDir: filepath.Join(base, "root"), meshDir: map[string]string{}}
	runOK(t, "ca", "init-root", "--dir", p.rootDir, "--organization", "Example Corp")
	for _, td := range trustDomains {
		p.meshDir[td] = filepath.Join(base, td)
		runOK(t, "ca", "init-intermediate", "--root-dir", p.rootDir, "--dir", p.meshDir[td], "--trust-domain", td)
	}
	return p
}

// startMeshCA runs `sdsagent ca` on the plugged-in files of trust domain td.
func (p *enterprisePKI) startMeshCA(t *testing.T, td string) *testCA {
	t.Helper()
	return startCAIn(t, p.meshDir[td], "127.0.0.1:0", "--trust-domain", td)
}

// signAtCA has an agent-side client sign a CSR for spiffe://td/ns/shop/sa/web
// with the CA, verifying the CA's TLS certificate with its root-cert.pem.
func signAtCA(t *testing.T, ca *testCA, td string) (crypto.Signer, pki.ID, []string) {
	t.Helper()
	client, err := caclient.New(caclient.Config{
		Addr:         ca.addr,
		RootCertFile: filepath.Join(ca.dir, "root-cert.pem"),
		TokenFile:    filepath.Join(ca.dir, "token"),
		ClusterID:    "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := client.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	}()
	key, err := pki.GenerateKey(pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.WorkloadID(td, "shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	chain, err := client.Sign(ctx, csr, time.Hour)
	if err != nil {
		t.Fatalf("sign with the %s CA: %v", td, err)
	}
	return key, id, chain
}

// verifyAsAgent checks a chain the way the agent does before serving it
// (pki.Verify: the chain must end in its root), and that this root is one
// of the roots in rootFile.
func verifyAsAgent(t *testing.T, chain []string, key crypto.Signer, id pki.ID, rootFile string) (*pki.Bundle, error) {
	t.Helper()
	certs, err := pki.ParseChain(chain)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.Verify(pki.VerifyInput{Chain: certs, Key: key.Public(), ID: id, Now: time.Now()})
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(roots, b.Roots[0].Equal) {
		return nil, fmt.Errorf("the chain ends in %q, which is not in %s", b.Roots[0].Subject, rootFile)
	}
	return b, nil
}

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(data)
	if err != nil || len(certs) != 1 {
		t.Fatalf("%s: %d certificates, err %v; want one", path, len(certs), err)
	}
	return certs[0]
}

// TestCAInitTwoMeshes follows the enterprise workflow: an offline root,
// one intermediate per mesh, one `sdsagent ca` per mesh over real TLS.
func TestCAInitTwoMeshes(t *testing.T) {
	meshes := []string{"mesh-a.example", "mesh-b.example"}
	p := newEnterprisePKI(t, meshes...)
	root := readCertFile(t, filepath.Join(p.rootDir, "root-cert.pem"))

	modes := map[string]os.FileMode{
		filepath.Join(p.rootDir, "root-key.pem"):  0o600,
		filepath.Join(p.rootDir, "root-cert.pem"): 0o644,
	}
	for _, dir := range p.meshDir {
		modes[filepath.Join(dir, "ca-key.pem")] = 0o600
		for _, name := range []string{"ca-cert.pem", "root-cert.pem", "cert-chain.pem"} {
			modes[filepath.Join(dir, name)] = 0o644
		}
	}
	for path, want := range modes {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %v, want %v", path, got, want)
		}
	}

	type issued struct {
		key   crypto.Signer
		id    pki.ID
		chain []string
	}
	got := map[string]issued{}
	for _, td := range meshes {
		t.Run(td, func(t *testing.T) {
			ca := p.startMeshCA(t, td)
			intermediate := readCertFile(t, filepath.Join(ca.dir, "ca-cert.pem"))

			listening := ca.logs.waitLine(t, "development CA listening")
			loaded := ca.logs.waitLine(t, "state loaded")
			if listening["mode"] != "intermediate" || loaded["ca_subject"] != intermediate.Subject.String() || loaded["root_subject"] != root.Subject.String() {
				t.Errorf("start logs do not name the mode and both subjects: %v / %v", listening, loaded)
			}

			key, id, chain := signAtCA(t, ca, td)
			if len(chain) != 3 {
				t.Fatalf("cert_chain has %d elements, want leaf, intermediate, root", len(chain))
			}
			certs, err := pki.ParseChain(chain)
			if err != nil {
				t.Fatal(err)
			}
			if !certs[1].Equal(intermediate) || !certs[2].Equal(root) {
				t.Error("cert_chain[1:] is not the mesh intermediate and the shared root")
			}
			if uris := certs[0].URIs; len(uris) != 1 || uris[0].String() != "spiffe://"+td+"/ns/shop/sa/web" {
				t.Errorf("leaf URIs = %v", uris)
			}
			pool, inter := x509.NewCertPool(), x509.NewCertPool()
			pool.AddCert(root)
			inter.AddCert(certs[1])
			if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err != nil {
				t.Errorf("leaf does not verify against the offline root: %v", err)
			}
			b, err := verifyAsAgent(t, chain, key, id, filepath.Join(ca.dir, "root-cert.pem"))
			if err != nil {
				t.Fatalf("agent verification: %v", err)
			}
			if len(b.Intermediates) != 1 || !b.Intermediates[0].Equal(intermediate) {
				t.Errorf("agent sees %d intermediates, want the mesh's", len(b.Intermediates))
			}
			got[td] = issued{key, id, chain}
		})
	}

	t.Run("each mesh's agent accepts the other mesh's chain", func(t *testing.T) {
		for td, is := range got {
			for other, dir := range p.meshDir {
				if _, err := verifyAsAgent(t, is.chain, is.key, is.id, filepath.Join(dir, "root-cert.pem")); err != nil {
					t.Errorf("chain from %s does not verify with %s's root-cert.pem: %v", td, other, err)
				}
			}
		}
	})
}

// TestCAInitOpenSSLInterop shows that what Go accepts and refuses, OpenSSL
// (whose verifier BoringSSL, and so Envoy, shares) does too.
func TestCAInitOpenSSLInterop(t *testing.T) {
	openssl := testtools.Need(t, "openssl", opensslHint)
	p := newEnterprisePKI(t, "mesh-a.example")
	dir := p.meshDir["mesh-a.example"]
	rootFile := filepath.Join(p.rootDir, "root-cert.pem")
	caFile := filepath.Join(dir, "ca-cert.pem")
	work := tempDir(t)

	ossl := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		out, err := exec.CommandContext(ctx, openssl, args...).CombinedOutput()
		return string(out), err
	}
	writePEM := func(t *testing.T, name string, cert *x509.Certificate) string {
		t.Helper()
		path := filepath.Join(work, name)
		if err := os.WriteFile(path, testpki.EncodeCert(cert.Raw), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	ca := p.startMeshCA(t, "mesh-a.example")
	_, _, chain := signAtCA(t, ca, "mesh-a.example")
	leafFile := filepath.Join(work, "leaf.pem")
	if err := os.WriteFile(leafFile, []byte(chain[0]), 0o644); err != nil {
		t.Fatal(err)
	}

	// A stolen intermediate key signing outside its trust domain.
	caKeyPEM, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.ParsePrivateKey(caKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	rogue := func(t *testing.T, uri string) *x509.Certificate {
		t.Helper()
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(666),
			NotBefore:    time.Now().Add(-time.Minute),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
			URIs:         []*url.URL{u},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, readCertFile(t, caFile), testpki.NewKey(t).Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}

	tests := []struct {
		name   string
		file   func(t *testing.T) string
		wantOK bool
		want   string
	}{
		{name: "leaf from sdsagent ca", file: func(*testing.T) string { return leafFile }, wantOK: true, want: "leaf.pem: OK"},
		{name: "intermediate", file: func(*testing.T) string { return caFile }, wantOK: true, want: "ca-cert.pem: OK"},
		{
			name: "rogue leaf for another trust domain",
			file: func(t *testing.T) string {
				return writePEM(t, "rogue-other.pem", rogue(t, "spiffe://mesh-b.example/ns/shop/sa/web"))
			},
			want: "permitted subtree violation",
		},
		{
			name: "rogue leaf for a subdomain",
			file: func(t *testing.T) string {
				return writePEM(t, "rogue-sub.pem", rogue(t, "spiffe://evil.mesh-a.example/ns/shop/sa/web"))
			},
			// OpenSSL already refuses it as not permitted (its "td"
			// matches exactly); Go needs the excluded ".td" for this.
			want: "permitted subtree violation",
		},
	}
	for _, tc := range tests {
		t.Run("verify "+tc.name, func(t *testing.T) {
			out, err := ossl(t, "verify", "-CAfile", rootFile, "-untrusted", caFile, tc.file(t))
			if tc.wantOK != (err == nil) || !strings.Contains(out, tc.want) {
				t.Errorf("openssl verify: err %v, output:\n%s\nwant success=%v and %q", err, out, tc.wantOK, tc.want)
			}
		})
	}

	t.Run("x509 -text shows the profile", func(t *testing.T) {
		for file, wants := range map[string][]string{
			caFile: {
				"Subject: O = mesh-a.example, CN = sdsagent intermediate CA",
				"Issuer: O = Example Corp, CN = sdsagent root CA",
				"CA:TRUE, pathlen:0",
				"Digital Signature, Certificate Sign, CRL Sign",
				"X509v3 Name Constraints: critical",
				"Permitted:\n                  URI:mesh-a.example",
				"Excluded:\n                  URI:.mesh-a.example",
				"X509v3 Authority Key Identifier",
			},
			rootFile: {"CA:TRUE, pathlen:1", "Certificate Sign, CRL Sign", "X509v3 Subject Key Identifier"},
		} {
			out, err := ossl(t, "x509", "-noout", "-text", "-in", file)
			if err != nil {
				t.Fatalf("openssl x509 %s: %v\n%s", file, err, out)
			}
			for _, w := range wants {
				if !strings.Contains(out, w) {
					t.Errorf("openssl x509 -text of %s lacks %q:\n%s", filepath.Base(file), w, out)
				}
			}
		}
	})
}

func TestCAInitCommands(t *testing.T) {
	tests := []struct {
		name string
		// args returns the command line; dir is a fresh directory.
		args     func(t *testing.T, dir string) []string
		wantCode int
		want     []string
	}{
		{
			name:     "ca help lists the init commands",
			args:     func(*testing.T, string) []string { return []string{"ca", "--help"} },
			wantCode: 0,
			want:     []string{"--trust-domain", "sdsagent ca init-root --dir ROOTDIR", "sdsagent ca init-intermediate --root-dir ROOTDIR --dir MESHDIR --trust-domain TD", "cert-chain.pem"},
		},
		{
			name:     "init-root help",
			args:     func(*testing.T, string) []string { return []string{"ca", "init-root", "--help"} },
			wantCode: 0,
			want:     []string{"--key-type", "--organization", "87600h"},
		},
		{
			name:     "init-intermediate help",
			args:     func(*testing.T, string) []string { return []string{"ca", "init-intermediate", "-h"} },
			wantCode: 0,
			want:     []string{"--name-constraint", "--root-dir", "8760h"},
		},
		{
			name:     "init-root without dir",
			args:     func(*testing.T, string) []string { return []string{"ca", "init-root"} },
			wantCode: 1,
			want:     []string{"sdsagent ca: --dir is required"},
		},
		{
			name: "init-root over an existing root",
			args: func(t *testing.T, dir string) []string {
				runOK(t, "ca", "init-root", "--dir", dir)
				return []string{"ca", "init-root", "--dir", dir}
			},
			wantCode: 1,
			want:     []string{"root-cert.pem, root-key.pem already in", "refusing to overwrite"},
		},
		{
			name: "init-intermediate without trust domain",
			args: func(_ *testing.T, dir string) []string {
				return []string{"ca", "init-intermediate", "--root-dir", dir, "--dir", dir + "/m"}
			},
			wantCode: 1,
			want:     []string{"--trust-domain is required"},
		},
		{
			name: "init-intermediate over existing files",
			args: func(t *testing.T, dir string) []string {
				p := newEnterprisePKI(t, "mesh-a.example")
				return []string{"ca", "init-intermediate", "--root-dir", p.rootDir, "--dir", p.meshDir["mesh-a.example"], "--trust-domain", "mesh-a.example"}
			},
			wantCode: 1,
			want:     []string{"ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem already in", "refusing to overwrite"},
		},
		{
			name: "ca with a key that is not ca-cert.pem's",
			args: func(t *testing.T, dir string) []string {
				p := newEnterprisePKI(t, "mesh-a.example", "mesh-b.example")
				a, b := p.meshDir["mesh-a.example"], p.meshDir["mesh-b.example"]
				key, err := os.ReadFile(filepath.Join(b, "ca-key.pem"))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(a, "ca-key.pem"), key, 0o600); err != nil {
					t.Fatal(err)
				}
				return []string{"ca", "--dir", a, "--trust-domain", "mesh-a.example", "--listen", "127.0.0.1:0"}
			},
			wantCode: 1,
			want:     []string{"ca-key.pem: private key does not match", "in ca-cert.pem"},
		},
		{
			name: "ca with a partial plugged-in set",
			args: func(t *testing.T, dir string) []string {
				p := newEnterprisePKI(t, "mesh-a.example")
				a := p.meshDir["mesh-a.example"]
				if err := os.Remove(filepath.Join(a, "cert-chain.pem")); err != nil {
					t.Fatal(err)
				}
				return []string{"ca", "--dir", a, "--trust-domain", "mesh-a.example", "--listen", "127.0.0.1:0"}
			},
			wantCode: 1,
			want:     []string{"incomplete plugged-in CA: missing cert-chain.pem"},
		},
		{
			name: "ca for a trust domain the intermediate may not sign",
			args: func(t *testing.T, dir string) []string {
				p := newEnterprisePKI(t, "mesh-a.example")
				return []string{"ca", "--dir", p.meshDir["mesh-a.example"], "--trust-domain", "mesh-b.example", "--listen", "127.0.0.1:0"}
			},
			wantCode: 1,
			want:     []string{"ca-cert.pem:", "not permitted"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runCmd(t, tc.args(t, filepath.Join(tempDir(t), "d"))...)
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d; output:\n%s", code, tc.wantCode, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
