package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sdsagent/sdsagent/internal/debug"
	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

// sdsWatch is an Envoy-like SotW stream that ACKs every push and keeps
// the latest version of each secret.
type sdsWatch struct {
	t   *testing.T
	st  *sdstest.Stream
	cur map[string]*tlsv3.Secret
}

// watch opens a stream for names on socket and waits until every name
// is served.
func watch(t *testing.T, socket string, names ...string) *sdsWatch {
	t.Helper()
	w := &sdsWatch{t: t, st: openStream(t, dial(t, socket)), cur: map[string]*tlsv3.Secret{}}
	if err := w.st.Request(names...); err != nil {
		t.Fatal(err)
	}
	w.until("the first response", func() bool {
		for _, n := range names {
			if w.cur[n] == nil {
				return false
			}
		}
		return true
	})
	return w
}

// until receives pushes until cond holds for the latest secrets.
func (w *sdsWatch) until(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		resp, err := recv(w.t, w.st, time.Until(deadline))
		if err != nil {
			w.t.Fatalf("waiting for %s: %v", what, err)
		}
		if err := w.st.ACK(); err != nil {
			w.t.Fatal(err)
		}
		for _, s := range resp.Secrets {
			w.cur[s.GetName()] = s
		}
	}
}

// nextPushIs receives the next push and checks cond on the secrets then.
// It checks that nothing was pushed after an event that must push
// nothing: make a later change (the marker) and check that the next push
// is the marker's.
func (w *sdsWatch) nextPushIs(what string, cond func() bool) {
	w.t.Helper()
	resp, err := recv(w.t, w.st, waitLimit)
	if err != nil {
		w.t.Fatalf("waiting for %s: %v", what, err)
	}
	if err := w.st.ACK(); err != nil {
		w.t.Fatal(err)
	}
	for _, s := range resp.Secrets {
		w.cur[s.GetName()] = s
	}
	if !cond() {
		w.t.Fatalf("the next push is not %s: ROOTCA %v", what, names(w.trusted("ROOTCA")))
	}
}

// identity returns default with roots (default "ROOTCA").
func (w *sdsWatch) identity(roots ...string) sdstest.Identity {
	name := "ROOTCA"
	if len(roots) > 0 {
		name = roots[0]
	}
	return sdstest.Identity{Cert: w.cur["default"], Roots: w.cur[name]}
}

// chain returns the served default chain, leaf first.
func (w *sdsWatch) chain() []*x509.Certificate {
	w.t.Helper()
	certs, err := pki.ParseCertificates(w.cur["default"].GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if err != nil {
		w.t.Fatal(err)
	}
	return certs
}

// issuedBy reports whether the served leaf is signed by ca, which comes
// right after it in the chain.
func (w *sdsWatch) issuedBy(ca *x509.Certificate) bool {
	c := w.chain()
	return len(c) > 1 && c[1].Equal(ca) && c[0].CheckSignatureFrom(ca) == nil
}

// trusted returns the trusted_ca of the secret name (default ROOTCA).
func (w *sdsWatch) trusted(name string) []*x509.Certificate {
	w.t.Helper()
	certs, err := pki.ParseCertificates(w.cur[name].GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil {
		w.t.Fatalf("%s: %v", name, err)
	}
	return certs
}

// rootsAre reports whether ROOTCA's trusted_ca is exactly want, in order.
func (w *sdsWatch) rootsAre(want ...*x509.Certificate) bool {
	return slices.EqualFunc(w.trusted("ROOTCA"), want, func(a, b *x509.Certificate) bool { return a.Equal(b) })
}

func names(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

func mtls(t *testing.T, step string, a, b sdstest.Identity) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := sdstest.MTLS(ctx, a, b); err != nil {
		t.Fatalf("%s: mTLS, first as server: %v", step, err)
	}
	if err := sdstest.MTLS(ctx, b, a); err != nil {
		t.Fatalf("%s: mTLS, second as server: %v", step, err)
	}
}

// writeFile replaces path atomically with content.
func writeFile(t *testing.T, path string, content ...[]byte) {
	t.Helper()
	filewatchtest.RenameOver(t, path, bytes.Join(content, nil))
}

func pemOf(certs ...*x509.Certificate) []byte { return pki.EncodeCertificates(certs) }

// countLines counts the JSON log lines with msg for which match holds.
func (b *logBuffer) countLines(msg string, match func(map[string]any) bool) int {
	n := 0
	for _, l := range b.lines() {
		if l["msg"] == msg && (match == nil || match(l)) {
			n++
		}
	}
	return n
}

// waitCount waits until countLines reaches n.
func (b *logBuffer) waitCount(t *testing.T, n int, msg string, match func(map[string]any) bool) {
	t.Helper()
	b.waitFor(t, fmt.Sprintf("%d %q lines", n, msg), func() bool { return b.countLines(msg, match) >= n })
}

// TestAgentChainsThroughIntermediates: with a plugged-in intermediate CA,
// default is leaf + intermediates (no root), ROOTCA the root, and two
// agents' workloads complete mTLS.
func TestAgentChainsThroughIntermediates(t *testing.T) {
	tests := []struct {
		name string
		// prepare writes a plugged-in CA directory and returns it.
		prepare func(t *testing.T) string
	}{
		{"root, intermediate from the init commands", func(t *testing.T) string {
			return newEnterprisePKI(t, "cluster.local").meshDir["cluster.local"]
		}},
		{"root, two intermediates", func(t *testing.T) string {
			root := testpki.NewRoot(t, "offline root")
			policy := root.NewIntermediate(t, "policy CA")
			issuing := policy.NewIntermediate(t, "issuing CA")
			dir := filepath.Join(tempDir(t), "mesh")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			key, err := pki.EncodePrivateKey(issuing.Key)
			if err != nil {
				t.Fatal(err)
			}
			for name, content := range map[string][]byte{
				"ca-cert.pem":    issuing.CertPEM,
				"ca-key.pem":     key,
				"cert-chain.pem": slices.Concat(issuing.CertPEM, policy.CertPEM, root.CertPEM),
				"root-cert.pem":  root.CertPEM,
			} {
				if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			return dir
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.prepare(t)
			ca := startCAIn(t, dir, "127.0.0.1:0")
			chainFile, err := os.ReadFile(filepath.Join(dir, "cert-chain.pem"))
			if err != nil {
				t.Fatal(err)
			}
			cas, err := pki.ParseCertificates(chainFile)
			if err != nil {
				t.Fatal(err)
			}
			inters, root := cas[:len(cas)-1], cas[len(cas)-1]
			sock := tempDir(t)
			var ids []sdstest.Identity
			for _, sa := range []string{"web", "db"} {
				a := startAgent(t, ca.agentArgs(filepath.Join(sock, sa+".sock"), "--service-account", sa))
				w := watch(t, a.socket, "default", "ROOTCA")
				chain := w.chain()
				if !slices.EqualFunc(chain[1:], inters, func(a, b *x509.Certificate) bool { return a.Equal(b) }) {
					t.Fatalf("%s: default = leaf + %v, want leaf + %v (no root)", sa, names(chain[1:]), names(inters))
				}
				if !w.rootsAre(root) {
					t.Fatalf("%s: ROOTCA = %v, want the root only", sa, names(w.trusted("ROOTCA")))
				}
				ids = append(ids, w.identity())
			}
			mtls(t, "web and db", ids[0], ids[1])
		})
	}
}

// TestCrossMeshMTLS: one offline root, an intermediate per mesh, a CA and
// an agent per mesh; workloads of each mesh complete mTLS with the
// other's, each verifying with its own ROOTCA.
func TestCrossMeshMTLS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		td1, td2 string
	}{
		{"two trust domains", "mesh-a.example", "mesh-b.example"},
		{"one trust domain", "cluster.local", "cluster.local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := tempDir(t)
			runOK(t, "ca", "init-root", "--dir", filepath.Join(base, "root"))
			root := readCertFile(t, filepath.Join(base, "root", "root-cert.pem"))
			var watches []*sdsWatch
			for i, td := range []string{tc.td1, tc.td2} {
				dir := filepath.Join(base, fmt.Sprintf("mesh%d", i+1))
				runOK(t, "ca", "init-intermediate", "--root-dir", filepath.Join(base, "root"), "--dir", dir, "--trust-domain", td)
				ca := startCAIn(t, dir, "127.0.0.1:0", "--trust-domain", td)
				a := startAgent(t, ca.agentArgs(filepath.Join(base, fmt.Sprintf("a%d.sock", i+1)), "--trust-domain", td, "--service-account", fmt.Sprintf("sa%d", i+1)))
				w := watch(t, a.socket, "default", "ROOTCA")
				if inter := readCertFile(t, filepath.Join(dir, "ca-cert.pem")); !w.issuedBy(inter) || len(w.chain()) != 2 {
					t.Fatalf("mesh %d: default = %v, want leaf + the mesh's intermediate", i+1, names(w.chain()))
				}
				if !w.rootsAre(root) {
					t.Fatalf("mesh %d: ROOTCA = %v, want the shared root", i+1, names(w.trusted("ROOTCA")))
				}
				watches = append(watches, w)
			}
			mtls(t, "across meshes", watches[0].identity(), watches[1].identity())
		})
	}
}

// TestAgentTrustAnchors: --trust-anchors adds roots to ROOTCA, each once
// and in order, republished on a kubelet update; a broken
// file is refused and logged while the previous ROOTCA stays; also with
// mounted certificates.
func TestAgentTrustAnchors(t *testing.T) {
	now := time.Now()
	rx := testpki.NewRoot(t, "anchor X")
	ry := testpki.NewRootValid(t, "anchor Y", now.Add(-time.Hour), now.Add(5*24*time.Hour)) // expires first
	ca := startCA(t, "127.0.0.1:0")
	caRoot := readCertFile(t, filepath.Join(ca.dir, "root-cert.pem"))
	dir := tempDir(t)
	anchorsDir := filepath.Join(dir, "anchors")
	anchors := filepath.Join(anchorsDir, "anchors.pem")
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": rx.CertPEM})
	a := startAgent(t, ca.agentArgs(filepath.Join(dir, "s.sock"), "--trust-anchors", anchors))
	w := watch(t, a.socket, "default", "ROOTCA")
	w.until("ROOTCA with the anchor", func() bool { return w.rootsAre(caRoot, rx.Cert) })

	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": slices.Concat(ry.CertPEM, pemOf(caRoot), rx.CertPEM, ry.CertPEM)})
	w.until("the new anchors", func() bool { return w.rootsAre(caRoot, ry.Cert, rx.Cert) })
	line := a.logs.waitLine(t, "trust roots changed")
	for _, k := range []string{"added_roots", "removed_roots", "trust_domain", "cause"} {
		if _, ok := line[k]; !ok {
			t.Fatalf("trust roots changed lacks %q: %v", k, line)
		}
	}
	if _, body := a.get(t, "/metrics"); !strings.Contains(body, fmt.Sprintf(`sdsagent_cert_expiry_timestamp_seconds{resource="ROOTCA"} %g`, float64(ry.Cert.NotAfter.Unix()))) {
		t.Fatalf("ROOTCA expiry metric is not the earliest root's (anchor Y):\n%s", body)
	}
	var out bytes.Buffer
	if err := runSecrets(context.Background(), []string{"--http-addr", a.http, "ROOTCA"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	if n := len(regexp.MustCompile(`(?m)^ROOTCA +CA +ACTIVE +true`).FindAllString(out.String(), -1)); n != 3 {
		t.Fatalf("sdsagent secrets shows %d ROOTCA rows, want one per root:\n%s", n, out.String())
	}

	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": []byte("-----BEGIN CERTIFICATE-----\nMIIB")})
	refused := a.logs.waitLine(t, "trust file refused; keeping its previous content")
	if refused["file"] != anchors || refused["reason"] != "malformed" || refused["role"] != "trust_anchors" {
		t.Fatalf("refusal log = %v, want the file and the reason", refused)
	}
	// Nothing pushed for it: the next push is the next good file's.
	rz := testpki.NewRoot(t, "anchor Z")
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": slices.Concat(ry.CertPEM, rx.CertPEM, rz.CertPEM)})
	w.nextPushIs("the good anchors file after the broken one", func() bool { return w.rootsAre(caRoot, ry.Cert, rx.Cert, rz.Cert) })
	if _, body := a.get(t, "/metrics"); !strings.Contains(body, `sdsagent_file_errors_total{reason="malformed"} 1`) {
		t.Fatal("the refused anchors file is not counted")
	}

	t.Run("mounted certificates", func(t *testing.T) {
		certDir := filepath.Join(dir, "certs")
		root := testpki.NewRoot(t, "mounted root")
		filewatchtest.KubeletWrite(t, certDir, mountedFiles(root, root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/default"}})))
		filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": rx.CertPEM})
		m := startAgent(t, mountedArgs(t, filepath.Join(dir, "m.sock"), "--file-mounted-certs", "--cert-dir", certDir, "--trust-anchors", anchors))
		mw := watch(t, m.socket, "default", "ROOTCA")
		mw.until("the mounted root and the anchor", func() bool { return mw.rootsAre(root.Cert, rx.Cert) })
	})
}

// TestRootRotationWithoutDowntime walks two agents through a root
// rotation with `sdsagent ca`: both on R1; R2 added as a trust anchor;
// the CA restarted as an intermediate under R2; A's CA root file gets R2
// and A re-issues at once while B is still under R1; B re-issues; the
// overlap ends and R1 is dropped; the anchor is removed. ROOTCA is
// checked exactly and mTLS both ways at every step.
func TestRootRotationWithoutDowntime(t *testing.T) {
	// Long enough to check step 2 before A drops R1, short for the test.
	const overlap = 4 * time.Second
	base := tempDir(t)
	for _, n := range []string{"1", "2"} {
		runOK(t, "ca", "init-root", "--dir", filepath.Join(base, "root"+n), "--common-name", "root R"+n)
		runOK(t, "ca", "init-intermediate", "--root-dir", filepath.Join(base, "root"+n), "--dir", filepath.Join(base, "mesh"+n), "--trust-domain", "cluster.local")
	}
	r1, r2 := readCertFile(t, filepath.Join(base, "root1", "root-cert.pem")), readCertFile(t, filepath.Join(base, "root2", "root-cert.pem"))
	i1, i2 := readCertFile(t, filepath.Join(base, "mesh1", "ca-cert.pem")), readCertFile(t, filepath.Join(base, "mesh2", "ca-cert.pem"))
	addr := freeAddr(t)
	ca1 := startCAIn(t, filepath.Join(base, "mesh1"), addr)
	token := filepath.Join(base, "mesh1", "token")
	anchors := filepath.Join(base, "anchors.pem")
	writeFile(t, anchors, []byte("\n"))

	type agentAt struct {
		*agent
		caRoot string
		w      *sdsWatch
	}
	newAgent := func(sa string) agentAt {
		dir := tempDir(t)
		caRoot := filepath.Join(dir, "ca-root.pem")
		writeFile(t, caRoot, pemOf(r1))
		a := startAgent(t, []string{"run", "--ca-addr", addr, "--ca-root-cert", caRoot, "--token-file", token,
			"--socket", filepath.Join(dir, "s.sock"), "--http-addr", "127.0.0.1:0", "--log-format", "json",
			"--service-account", sa, "--trust-anchors", anchors, "--root-overlap", overlap.String()})
		return agentAt{a, caRoot, watch(t, a.socket, "default", "ROOTCA")}
	}
	a, b := newAgent("web"), newAgent("db")

	// 0. R1 only, and the empty anchors file read (step 5 counts its
	// loads with no certificate).
	emptyAnchors := func(l map[string]any) bool { return l["role"] == "trust_anchors" && l["certificates"] == float64(0) }
	for _, x := range []agentAt{a, b} {
		if !x.w.issuedBy(i1) || !x.w.rootsAre(r1) {
			t.Fatalf("start: chain %v, ROOTCA %v; want under R1", names(x.w.chain()), names(x.w.trusted("ROOTCA")))
		}
		x.logs.waitCount(t, 1, "trust file loaded", emptyAnchors)
	}
	mtls(t, "R1 only", a.w.identity(), b.w.identity())

	// 1. R2 added as a trust anchor, everywhere.
	writeFile(t, anchors, pemOf(r2))
	for _, x := range []agentAt{a, b} {
		x.w.until("R1 and R2", func() bool { return x.w.rootsAre(r1, r2) })
	}
	mtls(t, "R1 and the R2 anchor", a.w.identity(), b.w.identity())
	peerR1 := b.w.identity() // a workload that stays under R1

	// 2. The CA moves to the intermediate under R2 (same address and
	// token); A's CA root file gets both roots, so A re-issues at once.
	if code := ca1.stop(t); code != 0 {
		t.Fatalf("ca exited %d", code)
	}
	tok, err := os.ReadFile(token)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "mesh2", "token"), tok, 0o600); err != nil {
		t.Fatal(err)
	}
	startCAIn(t, filepath.Join(base, "mesh2"), addr)
	writeFile(t, a.caRoot, pemOf(r1, r2))
	a.w.until("A under R2, R1 retiring", func() bool { return a.w.issuedBy(i2) && a.w.rootsAre(r2, r1) })
	if !b.w.issuedBy(i1) || !b.w.rootsAre(r1, r2) {
		t.Fatal("B changed without a reason")
	}
	mtls(t, "A under R2, B under R1", a.w.identity(), b.w.identity())
	a.logs.waitLine(t, "ca root file changed; renewing the workload certificate")
	if line := a.logs.waitLine(t, "trust root retiring; the CA signs under another root now"); line["subject"] != r1.Subject.String() || line["overlap"] != overlap.String() {
		t.Fatalf("retiring log line = %v", line)
	}

	// 3. B's CA root file changes too: B re-issues under R2.
	writeFile(t, b.caRoot, pemOf(r2))
	b.w.until("B under R2, R1 retiring", func() bool { return b.w.issuedBy(i2) && b.w.rootsAre(r2, r1) })
	mtls(t, "both under R2", a.w.identity(), b.w.identity())

	// 4. The overlap ends: R2 only (an anchor too, but once).
	for _, x := range []agentAt{a, b} {
		x.w.until("R1 dropped", func() bool { return x.w.rootsAre(r2) })
		x.logs.waitLine(t, "trust root retired; its overlap ended")
	}
	mtls(t, "R2 only", a.w.identity(), b.w.identity())
	if err := sdstest.MTLS(context.Background(), a.w.identity(), peerR1); err == nil {
		t.Fatal("a workload under R1 is still accepted after R1 was dropped")
	}

	// 5. The anchor is removed: nothing to push, R2 is the CA's root. The
	// next push is the one for a later anchor R3.
	writeFile(t, anchors, []byte("\n"))
	for _, x := range []agentAt{a, b} {
		x.logs.waitCount(t, 2, "trust file loaded", emptyAnchors)
	}
	r3 := testpki.NewRoot(t, "root R3")
	writeFile(t, anchors, r3.CertPEM)
	for _, x := range []agentAt{a, b} {
		x.w.nextPushIs("R3 added after the anchor R2 was removed", func() bool { return x.w.rootsAre(r2, r3.Cert) })
	}
	mtls(t, "after the rotation", a.w.identity(), b.w.identity())
}

// TestSPIFFETrustBundles: two meshes with their own roots federate
// through trust bundle files. A serves ROOTCA for Envoy's SPIFFE
// validator; B keeps trusted_ca for ROOTCA and serves ALL on request.
func TestSPIFFETrustBundles(t *testing.T) {
	caA := startCA(t, "127.0.0.1:0", "--trust-domain", "mesh-a.example")
	caB := startCA(t, "127.0.0.1:0", "--trust-domain", "mesh-b.example")
	rootA, rootB := readCertFile(t, filepath.Join(caA.dir, "root-cert.pem")), readCertFile(t, filepath.Join(caB.dir, "root-cert.pem"))
	dir := tempDir(t)
	bundleA, bundleB := filepath.Join(dir, "mesh-a.pem"), filepath.Join(dir, "mesh-b.pem")
	writeFile(t, bundleA, pemOf(rootA))
	writeFile(t, bundleB, pemOf(rootB))

	a := startAgent(t, caA.agentArgs(filepath.Join(dir, "a.sock"), "--trust-domain", "mesh-a.example",
		"--spiffe-validator", "--trust-bundle", "mesh-b.example="+bundleB))
	b := startAgent(t, caB.agentArgs(filepath.Join(dir, "b.sock"), "--trust-domain", "mesh-b.example",
		"--trust-bundle", "mesh-a.example="+bundleA))
	wa := watch(t, a.socket, "default", "ROOTCA")
	wb := watch(t, b.socket, "default", "ROOTCA", "ALL")

	bundles := func(sec *tlsv3.Secret) map[string][]*x509.Certificate {
		t.Helper()
		m, err := sdstest.TrustDomainRoots(sec)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	is := func(got []*x509.Certificate, want ...*x509.Certificate) bool {
		return slices.EqualFunc(got, want, func(a, b *x509.Certificate) bool { return a.Equal(b) })
	}
	if m := bundles(wa.cur["ROOTCA"]); len(m) != 2 || !is(m["mesh-a.example"], rootA) || !is(m["mesh-b.example"], rootB) {
		t.Fatalf("A's ROOTCA bundles = %v", m)
	}
	if wa.cur["ROOTCA"].GetValidationContext().GetTrustedCa() != nil {
		t.Fatal("A's ROOTCA carries trusted_ca beside the SPIFFE validator")
	}
	if !wb.rootsAre(rootB) {
		t.Fatal("B's ROOTCA is not the plain trusted_ca of its own root")
	}
	if m := bundles(wb.cur["ALL"]); len(m) != 2 || !is(m["mesh-b.example"], rootB) || !is(m["mesh-a.example"], rootA) {
		t.Fatalf("B's ALL bundles = %v", m)
	}

	// Federated: each verifies the other with the other's bundle.
	mtls(t, "federated", wa.identity(), wb.identity("ALL"))
	// B's plain ROOTCA has no root for mesh A.
	if err := sdstest.MTLS(context.Background(), wb.identity(), wa.identity()); err == nil {
		t.Fatal("B's ROOTCA (its own root only) accepted mesh A")
	}

	// A bundle file changes: pushed within a second.
	extra := testpki.NewRoot(t, "next root of mesh-b")
	begin := time.Now()
	writeFile(t, bundleB, pemOf(rootB), extra.CertPEM)
	wa.until("mesh-b's new bundle", func() bool { return len(bundles(wa.cur["ROOTCA"])["mesh-b.example"]) == 2 })
	if took := time.Since(begin); took > time.Second {
		t.Fatalf("bundle pushed %s after the change, want within 1s", took)
	}
	if line := a.logs.waitLine(t, "trust roots changed"); line["trust_domain"] == nil {
		t.Fatalf("trust roots changed = %v", line)
	}

	// The operator's view: a row per root, type CA; the PEM of every root.
	var out bytes.Buffer
	if err := runSecrets(context.Background(), []string{"--http-addr", a.http}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	if n := len(regexp.MustCompile(`(?m)^ROOTCA +CA +ACTIVE +true`).FindAllString(out.String(), -1)); n != 3 {
		t.Fatalf("sdsagent secrets shows %d ROOTCA rows, want 3:\n%s", n, out.String())
	}
	out.Reset()
	if err := runSecrets(context.Background(), []string{"--http-addr", a.http, "-o", "pem", "ROOTCA"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	if certs, err := pki.ParseCertificates(out.Bytes()); err != nil || !is(certs, rootA, rootB, extra.Cert) {
		t.Fatalf("-o pem ROOTCA = %v, %v", names(certs), err)
	}
	// /debug/secrets carries the validator config, its Any resolved.
	code, body := a.get(t, "/debug/secrets")
	dump, err := debug.ParseSecrets([]byte(body))
	if code != 200 || err != nil || len(dump.GetDynamicActiveSecrets()) != 2 {
		t.Fatalf("/debug/secrets = %d, %v:\n%s", code, err, body)
	}
	sec := &tlsv3.Secret{}
	if err := dump.GetDynamicActiveSecrets()[1].GetSecret().UnmarshalTo(sec); err != nil {
		t.Fatal(err)
	}
	if m := bundles(sec); len(m) != 2 || !is(m["mesh-b.example"], rootB, extra.Cert) {
		t.Fatalf("/debug/secrets ROOTCA bundles = %v", m)
	}
}
