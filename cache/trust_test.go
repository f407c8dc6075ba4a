package cache

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
	"github.com/sdsagent/sdsagent/sds/sdstest"
)

func rootCerts(t *testing.T, n int) []*x509.Certificate {
	t.Helper()
	out := make([]*x509.Certificate, n)
	for i := range out {
		out[i] = testpki.NewRoot(t, fmt.Sprintf("root %d", i+1)).Cert
	}
	return out
}

func retiringAt(until time.Time, certs ...*x509.Certificate) []retiringRoot {
	var out []retiringRoot
	for _, c := range certs {
		out = append(out, retiringRoot{cert: c, until: until})
	}
	return out
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func subjects(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

func TestComposeRoots(t *testing.T) {
	r := rootCerts(t, 4)
	until := start.Add(time.Hour)
	tests := []struct {
		name                       string
		primary, retiring, anchors []*x509.Certificate
		want                       []*x509.Certificate
	}{
		{"primary only", r[:1], nil, nil, r[:1]},
		{"primary, then retiring, then anchors", r[1:2], r[:1], r[2:3], []*x509.Certificate{r[1], r[0], r[2]}},
		{"anchors in file order", r[:1], nil, []*x509.Certificate{r[3], r[2]}, []*x509.Certificate{r[0], r[3], r[2]}},
		{"each certificate once, at its first place", r[:1], r[1:2], []*x509.Certificate{r[1], r[0], r[2], r[2]}, []*x509.Certificate{r[0], r[1], r[2]}},
		{"several retiring keep their order", r[2:3], []*x509.Certificate{r[1], r[0]}, nil, []*x509.Certificate{r[2], r[1], r[0]}},
		{"the new root already an anchor", r[1:2], r[:1], r[1:2], []*x509.Certificate{r[1], r[0]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := composeRoots(tt.primary, retiringAt(until, tt.retiring...), tt.anchors)
			if !sameCerts(got, tt.want) {
				t.Fatalf("composeRoots = %v, want %v", subjects(got), subjects(tt.want))
			}
		})
	}
}

func TestRetireRoots(t *testing.T) {
	r := rootCerts(t, 3)
	now, overlap := start, time.Hour
	tests := []struct {
		name     string
		old, cur []*x509.Certificate
		retiring []retiringRoot
		want     []retiringRoot
	}{
		{"first answer retires nothing", nil, r[:1], nil, nil},
		{"same root retires nothing", r[:1], r[:1], nil, nil},
		{"a new root retires the old one for the overlap", r[:1], r[1:2], nil, retiringAt(now.Add(overlap), r[0])},
		{"a root current again stops retiring; the one it replaced retires", r[1:2], r[:1], retiringAt(now.Add(-10*time.Minute), r[0]), retiringAt(now.Add(overlap), r[1])},
		{"a second change comes first, the earlier keeps its deadline", r[1:2], r[2:3], retiringAt(now.Add(10*time.Minute), r[0]),
			append(retiringAt(now.Add(overlap), r[1]), retiringAt(now.Add(10*time.Minute), r[0])...)},
		{"a root kept while another is dropped", r[:2], r[:1], nil, retiringAt(now.Add(overlap), r[1])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := retireRoots(tt.old, tt.cur, tt.retiring, now, overlap)
			if !slices.EqualFunc(got, tt.want, func(a, b retiringRoot) bool { return a.cert.Equal(b.cert) && a.until.Equal(b.until) }) {
				t.Fatalf("retireRoots = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestExpireRoots(t *testing.T) {
	r := rootCerts(t, 2)
	retiring := append(retiringAt(start, r[0]), retiringAt(start.Add(time.Second), r[1])...)
	kept, dropped := expireRoots(retiring, start.Add(-time.Nanosecond))
	if len(kept) != 2 || len(dropped) != 0 {
		t.Fatalf("before any deadline: kept %d, dropped %d", len(kept), len(dropped))
	}
	kept, dropped = expireRoots(retiring, start)
	if len(kept) != 1 || !kept[0].cert.Equal(r[1]) || len(dropped) != 1 || !dropped[0].cert.Equal(r[0]) {
		t.Fatalf("at the first deadline: kept %v, dropped %v", kept, dropped)
	}
}

// until advances the fake clock in small steps until cond holds: file
// events are debounced on the manager's clock.
func (h *harness) until(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; logs: %v", what, h.logs.All())
		}
		h.clock.Advance(10 * time.Millisecond)
		select {
		case <-h.updates:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// signBy makes the fake CA sign with issuer from now on, backdating
// NotBefore by backdate, and signs.
func signBy(issuer *testpki.CA, backdate time.Duration) answer {
	return func(ctx context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
		ca.mu.Lock()
		ca.issuer, ca.backdate = issuer, backdate
		ca.mu.Unlock()
		return signNormally(ctx, t, ca, csr, ttl)
	}
}

// servedRoots returns ROOTCA's roots, or nil.
func servedRoots(m *Manager) []*x509.Certificate {
	sec, ok := m.Snapshot().Get(RootCertName)
	if !ok {
		return nil
	}
	return sec.Certs
}

// rootsAre reports whether m's ROOTCA is exactly want, in order, in both
// its parsed and its PEM form.
func rootsAre(m *Manager, want ...*testpki.CA) bool {
	sec, ok := m.Snapshot().Get(RootCertName)
	if !ok || len(sec.Certs) != len(want) {
		return false
	}
	var pemWant []byte
	for i, w := range want {
		if !sec.Certs[i].Equal(w.Cert) {
			return false
		}
		pemWant = append(pemWant, w.CertPEM...)
	}
	return bytes.Equal(sec.TrustedCAPEM, pemWant)
}

// issuedBy reports whether m serves a leaf signed by ca.
func issuedBy(m *Manager, ca *testpki.CA) bool {
	sec, ok := m.Snapshot().Get(WorkloadCertName)
	return ok && len(sec.Certs) > 1 && sec.Certs[1].Equal(ca.Cert) && sec.Certs[0].CheckSignatureFrom(ca.Cert) == nil
}

// identityOf returns what m serves as default and ROOTCA, as Envoy
// receives them in the trusted_ca form.
func identityOf(t *testing.T, m *Manager) sdstest.Identity {
	t.Helper()
	snap := m.Snapshot()
	def, ok1 := snap.Get(WorkloadCertName)
	roots, ok2 := snap.Get(RootCertName)
	if !ok1 || !ok2 {
		t.Fatal("default or ROOTCA not served")
	}
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	return sdstest.Identity{
		Cert: &tlsv3.Secret{Name: WorkloadCertName, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(def.CertChainPEM), PrivateKey: inline(def.PrivateKeyPEM)}}},
		Roots: &tlsv3.Secret{Name: RootCertName, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(roots.TrustedCAPEM)}}},
	}
}

// mtlsBothWays runs real TLS handshakes between a and b, each as server
// and as client, each verifying with its own ROOTCA.
func mtlsBothWays(t *testing.T, step string, a, b sdstest.Identity) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := sdstest.MTLS(ctx, a, b); err != nil {
		t.Fatalf("%s: mTLS a<-b: %v", step, err)
	}
	if err := sdstest.MTLS(ctx, b, a); err != nil {
		t.Fatalf("%s: mTLS b<-a: %v", step, err)
	}
}

func TestManagerServesIntermediateChains(t *testing.T) {
	now := time.Now()
	root := testpki.NewRoot(t, "offline root")
	issuing := root.NewIntermediate(t, "mesh CA")
	policy := root.NewIntermediate(t, "policy CA")
	deep := policy.NewIntermediate(t, "issuing CA below policy")
	tests := []struct {
		name   string
		issuer *testpki.CA
		// wantChain are the certificates after the leaf in default.
		wantChain []*testpki.CA
	}{
		{"root, intermediate, leaf", issuing, []*testpki.CA{issuing}},
		{"root, two intermediates, leaf", deep, []*testpki.CA{deep, policy}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids []sdstest.Identity
			for _, sa := range []string{"web", "db"} {
				id, _ := pki.WorkloadID("cluster.local", "default", sa)
				h := newHarnessAt(t, now, func(c *Config) { c.ID = id }, signBy(tt.issuer, 10*time.Second))
				h.waitCall()
				h.waitPublished()
				def := h.current()
				if len(def.Certs) != 1+len(tt.wantChain) {
					t.Fatalf("default has %d certificates, want the leaf and %d intermediates", len(def.Certs), len(tt.wantChain))
				}
				pemWant := pki.EncodeCertificates(def.Certs[:1])
				for i, c := range tt.wantChain {
					if !def.Certs[i+1].Equal(c.Cert) {
						t.Fatalf("default[%d] is %s, want %s", i+1, def.Certs[i+1].Subject, c.Cert.Subject)
					}
					pemWant = append(pemWant, c.CertPEM...)
				}
				if !bytes.Equal(def.CertChainPEM, pemWant) {
					t.Fatal("default's PEM is not leaf + intermediates in order (or repeats the root)")
				}
				if !rootsAre(h.mgr, root) {
					t.Fatalf("ROOTCA = %v, want the root only", subjects(servedRoots(h.mgr)))
				}
				ids = append(ids, identityOf(t, h.mgr))
			}
			mtlsBothWays(t, tt.name, ids[0], ids[1])
		})
	}
}

func TestManagerRefusesChainsThatDoNotWalkToTheRoot(t *testing.T) {
	root := testpki.NewRootValid(t, "offline root", start.Add(-24*time.Hour), start.Add(365*24*time.Hour))
	issuing := root.NewIntermediate(t, "mesh CA")
	other := root.NewIntermediate(t, "another mesh CA")
	policy := root.NewIntermediate(t, "policy CA")
	deep := policy.NewIntermediate(t, "issuing CA below policy")
	chainOf := func(issuer *testpki.CA, middle ...*testpki.CA) answer {
		return func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
			now := ca.clock.Now()
			leaf := issuer.SignCSR(t, csr, now.Add(-time.Second), now.Add(ttl))
			chain := []string{string(testpki.EncodeCert(leaf.Raw))}
			for _, m := range middle {
				chain = append(chain, string(m.CertPEM))
			}
			return append(chain, string(root.CertPEM)), nil
		}
	}
	tests := []struct {
		name   string
		answer answer
	}{
		{"intermediate left out", chainOf(issuing)},
		{"another intermediate of the same root", chainOf(issuing, other)},
		{"upper of two intermediates left out", chainOf(deep, deep)},
		{"lower of two intermediates left out", chainOf(deep, policy)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil, signBy(issuing, 10*time.Second))
			h.waitCall()
			h.waitPublished()
			good := h.current()
			h.ca.then(tt.answer)
			h.advanceToNextAttempt()
			h.waitParked()
			if h.current() != good {
				t.Fatal("a chain that does not verify was served")
			}
			failed := h.logs.FilterMessage("certificate renewal failed; serving the previous certificate").All()
			if len(failed) != 1 || !strings.Contains(fmt.Sprint(failed[0].ContextMap()["error"]), "chain") {
				t.Fatalf("want one failure naming the chain check, got %v", h.logs.All())
			}
		})
	}
}

// TestManagerRootRotationWithoutDowntime walks two agents through a root
// rotation: both on R1; R2 added as a trust anchor; the CA moves to an
// intermediate under R2; A renews at once (its CA root file changed)
// while B is still under R1; B renews; R1's overlap ends. ROOTCA is
// checked exactly and mTLS both ways at every step.
func TestManagerRootRotationWithoutDowntime(t *testing.T) {
	// The fake clock starts at the real time, and the CA backdates leaves
	// by 2h, so that the handshakes (verifying at the real time) accept
	// leaves issued after the fake clock jumped an hour ahead.
	now := time.Now().Truncate(time.Second)
	r1 := testpki.NewRootValid(t, "root R1", now.Add(-48*time.Hour), now.Add(30*24*time.Hour))
	r2 := testpki.NewRootValid(t, "root R2", now.Add(-48*time.Hour), now.Add(90*24*time.Hour))
	i1, i2 := r1.NewIntermediate(t, "mesh CA under R1"), r2.NewIntermediate(t, "mesh CA under R2")
	dir := t.TempDir()
	anchors := writeFile(t, dir, "anchors.pem", []byte("\n"))

	type agent struct {
		h      *harness
		caRoot string
	}
	newAgent := func(sa string) agent {
		caRoot := writeFile(t, dir, sa+"-ca-root.pem", r1.CertPEM)
		id, _ := pki.WorkloadID("cluster.local", "default", sa)
		h := newHarnessAt(t, now, func(c *Config) {
			c.ID, c.TrustAnchorsFile, c.CARootCertFile, c.FileDebounce = id, anchors, caRoot, fileDebounce
		}, signBy(i1, 2*time.Hour))
		return agent{h, caRoot}
	}
	a, b := newAgent("web"), newAgent("db")
	expiry := func(x agent) float64 {
		return testutil.ToFloat64(x.h.metrics.CertExpiryTimestamp.WithLabelValues(RootCertName))
	}

	// 0. Old root only.
	for _, x := range []agent{a, b} {
		x.h.until("the first identity under R1", func() bool { return rootsAre(x.h.mgr, r1) && issuedBy(x.h.mgr, i1) })
	}
	mtlsBothWays(t, "R1 only", identityOf(t, a.h.mgr), identityOf(t, b.h.mgr))

	// 1. The operator adds R2 as a trust anchor: both trust both roots;
	// nothing is re-issued.
	filewatchtest.RenameOver(t, anchors, r2.CertPEM)
	for _, x := range []agent{a, b} {
		x.h.until("R2 trusted as an anchor", func() bool { return rootsAre(x.h.mgr, r1, r2) })
		if st := x.h.mgr.Status(); st.Issued != 1 {
			t.Fatalf("an anchors change re-issued the certificate: %+v", st)
		}
		if got := expiry(x); got != float64(r1.Cert.NotAfter.Unix()) {
			t.Fatalf("ROOTCA expiry metric = %v, want R1's (the earliest)", got)
		}
	}
	mtlsBothWays(t, "R1 and the R2 anchor", identityOf(t, a.h.mgr), identityOf(t, b.h.mgr))
	// A peer that stays under R1 (its leaf from R1, its roots R1 and R2).
	peerR1 := identityOf(t, b.h.mgr)

	// 2. The CA moves to an intermediate under R2. A's CA root file gets
	// R2: A renews at once; B is still under R1.
	a.h.ca.use(i2)
	b.h.ca.use(i2)
	filewatchtest.RenameOver(t, a.caRoot, append(bytes.Clone(r1.CertPEM), r2.CertPEM...))
	a.h.until("A re-issued under R2", func() bool { return issuedBy(a.h.mgr, i2) && rootsAre(a.h.mgr, r2, r1) })
	switchedA := a.h.mgr.Status().LastAttempt
	if !rootsAre(b.h.mgr, r1, r2) || !issuedBy(b.h.mgr, i1) {
		t.Fatal("B changed without a reason")
	}
	mtlsBothWays(t, "A under R2, B under R1", identityOf(t, a.h.mgr), identityOf(t, b.h.mgr))
	a.h.until("the retirement log", func() bool {
		return a.h.logs.FilterMessage("trust root retiring; the CA signs under another root now").Len() == 1
	})
	line := a.h.logs.FilterMessage("trust root retiring; the CA signs under another root now").All()[0].ContextMap()
	if line["subject"] != r1.Cert.Subject.String() || line["sha256"] != fingerprint(r1.Cert) ||
		!retiresAfter(line["retire_at"].(time.Time), switchedA.Add(time.Hour)) || line["overlap"] != time.Hour {
		t.Fatalf("retiring log line = %v, want R1 retiring one TTL (1h, the default overlap) after %s", line, switchedA)
	}
	if a.h.logs.FilterMessage("ca root file changed; renewing the workload certificate").Len() != 1 {
		t.Fatal("the CA root file change is not logged")
	}
	if n := a.h.logs.FilterMessage(untrustedRootWarning).Len(); n != 0 {
		t.Fatal("warned about the new root though it was a trust anchor already")
	}

	// 3. B renews (its CA root file changes too).
	filewatchtest.RenameOver(t, b.caRoot, r2.CertPEM)
	b.h.until("B re-issued under R2", func() bool { return issuedBy(b.h.mgr, i2) && rootsAre(b.h.mgr, r2, r1) })
	mtlsBothWays(t, "both under R2, R1 retiring", identityOf(t, a.h.mgr), identityOf(t, b.h.mgr))
	mtlsBothWays(t, "a peer still under R1 during the overlap", identityOf(t, a.h.mgr), peerR1)

	// 4. The overlap ends: R1 is dropped, R2 alone remains (also an anchor,
	// so once).
	for _, x := range []agent{a, b} {
		at, ok := x.h.mgr.trust.nextRetirement()
		if !ok {
			t.Fatal("no retirement scheduled")
		}
		x.h.waitParked()
		x.h.clock.Set(at.Add(-time.Second))
		x.h.waitParked()
		if !rootsAre(x.h.mgr, r2, r1) {
			t.Fatal("R1 dropped before its overlap ended")
		}
		x.h.clock.Set(at)
		x.h.until("R1 retired", func() bool { return rootsAre(x.h.mgr, r2) })
		if got := expiry(x); got != float64(r2.Cert.NotAfter.Unix()) {
			t.Fatalf("ROOTCA expiry metric = %v, want R2's", got)
		}
		// Logged after the publish.
		x.h.until("the retirement log", func() bool {
			return x.h.logs.FilterMessage("trust roots changed").FilterField(zap.String("cause", causeRetired)).Len() > 0
		})
		retired := x.h.logs.FilterMessage("trust root retired; its overlap ended").All()
		if len(retired) != 1 || retired[0].ContextMap()["sha256"] != fingerprint(r1.Cert) || retired[0].ContextMap()["kept_as_trust_anchor"] != false {
			t.Fatalf("retired log lines = %v", retired)
		}
		changed := x.h.logs.FilterMessage("trust roots changed").FilterField(zap.String("cause", causeRetired)).All()
		if len(changed) != 1 || fmt.Sprint(changed[0].ContextMap()["removed_roots"]) != fmt.Sprint([]any{r1.Cert.Subject.String() + " sha256:" + fingerprint(r1.Cert)}) {
			t.Fatalf("trust roots changed lines = %v", changed)
		}
	}
	mtlsBothWays(t, "R2 only", identityOf(t, a.h.mgr), identityOf(t, b.h.mgr))
	if err := sdstest.MTLS(context.Background(), identityOf(t, a.h.mgr), peerR1); err == nil {
		t.Fatal("a peer under R1 is still accepted after R1 retired")
	}

	// 5. The operator removes the anchor: R2 is the CA's root, nothing changes.
	before, _ := a.h.mgr.Snapshot().Get(RootCertName)
	filewatchtest.RenameOver(t, anchors, []byte("\n"))
	a.h.until("the emptied anchors file", func() bool {
		return a.h.logs.FilterMessage("trust file loaded").FilterField(zap.Int("certificates", 0)).Len() == 2
	})
	if after, _ := a.h.mgr.Snapshot().Get(RootCertName); after != before {
		t.Fatal("ROOTCA republished although its content did not change")
	}
}

func TestManagerRenewsWhenTheCARootFileChangesButNotInALoop(t *testing.T) {
	dir := t.TempDir()
	caRoot := writeFile(t, dir, "root-cert.pem", testpki.NewRoot(t, "CA TLS root 1").CertPEM)
	h := newHarness(t, func(c *Config) { c.CARootCertFile, c.FileDebounce = caRoot, fileDebounce })
	h.until("the CA root file read", func() bool {
		return h.mgr.Status().Issued == 1 && h.logs.FilterMessage("trust file loaded").FilterField(zap.String("role", roleCARoot)).Len() == 1
	})
	h.until("a quiet moment", func() bool { return true })
	if st := h.mgr.Status(); st.Issued != 1 {
		t.Fatalf("reading the CA root file at start renewed: %+v", st)
	}

	filewatchtest.RenameOver(t, caRoot, testpki.NewRoot(t, "CA TLS root 2").CertPEM)
	h.until("a renewal at once", func() bool { return h.mgr.Status().Issued == 2 })
	renewed := h.mgr.Status().LastAttempt

	// Another change right after: the renewal waits for the interval.
	filewatchtest.RenameOver(t, caRoot, testpki.NewRoot(t, "CA TLS root 3").CertPEM)
	h.until("the second change", func() bool {
		return h.logs.FilterMessage("ca root file changed; renewing the workload certificate").Len() == 2
	})
	next := h.mgr.Status().NextRenewal
	if d := next.Sub(renewed); d > TrustRenewMinInterval || d < TrustRenewMinInterval-time.Second {
		t.Fatalf("second renewal due %s after the first, want %s", d, TrustRenewMinInterval)
	}
	if st := h.mgr.Status(); st.Issued != 2 {
		t.Fatalf("renewed again at once: %+v", st)
	}
	h.waitParked()
	h.clock.Set(next)
	h.until("the delayed renewal", func() bool { return h.mgr.Status().Issued == 3 })
}

// trustHarness runs a Manager serving mounted certificates under root,
// with the trust files mutate sets.
func trustHarness(t *testing.T, root *testpki.CA, mutate func(c *Config)) *fileHarness {
	t.Helper()
	certDir := t.TempDir()
	l := root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/web"}})
	filewatchtest.KubeletWrite(t, certDir, mountedFiles(root, l))
	return newFileHarness(t, func(c *Config) {
		c.MountedCertDir, c.Signer, c.FileDebounce = certDir, nil, 0 // the default debounce, as in production
		mutate(c)
	})
}

func TestTrustAnchorsFile(t *testing.T) {
	root := testpki.NewRoot(t, "mounted root")
	now := time.Now()
	ra := testpki.NewRootValid(t, "anchor A", now.Add(-time.Hour), now.Add(10*24*time.Hour)) // expires first
	rb := testpki.NewRoot(t, "anchor B")
	anchorsDir := filepath.Join(t.TempDir(), "anchors")
	anchors := filepath.Join(anchorsDir, "anchors.pem")
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": ra.CertPEM})
	h := trustHarness(t, root, func(c *Config) { c.TrustAnchorsFile = anchors })
	h.waitSecret(RootCertName, func(*Secret) bool { return rootsAre(h.mgr, root, ra) })
	if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(RootCertName)); got != float64(ra.Cert.NotAfter.Unix()) {
		t.Fatalf("ROOTCA expiry metric = %v, want the earliest root's, anchor A's", got)
	}

	// A kubelet update with repeats: each root once, the mounted root
	// first, then the file's order; published within a second.
	begin := time.Now()
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": slices.Concat(rb.CertPEM, root.CertPEM, ra.CertPEM, rb.CertPEM)})
	roots := h.waitSecret(RootCertName, func(*Secret) bool { return rootsAre(h.mgr, root, rb, ra) })
	if took := time.Since(begin); took > time.Second {
		t.Fatalf("anchors published %s after the change, want within 1s", took)
	}
	h.eventually("the change to be logged", func() bool {
		return h.logs.FilterMessage("trust roots changed").FilterField(zap.String("cause", causeAnchors)).Len() == 2
	})
	line := h.logs.FilterMessage("trust roots changed").FilterField(zap.String("cause", causeAnchors)).All()[1].ContextMap()
	if fmt.Sprint(line["added_roots"]) != fmt.Sprint([]any{rb.Cert.Subject.String() + " sha256:" + fingerprint(rb.Cert)}) ||
		fmt.Sprint(line["removed_roots"]) != "[]" || line["roots"] != int64(3) || line["trust_domain"] != "cluster.local" {
		t.Fatalf("trust roots changed = %v", line)
	}

	// A broken file is refused, said with the file and the reason, and
	// the previous ROOTCA stays.
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": half(rb.CertPEM)})
	h.eventually("the refusal", func() bool {
		return h.logs.FilterMessage("trust file refused; keeping its previous content").Len() == 1
	})
	refused := h.logs.FilterMessage("trust file refused; keeping its previous content").All()[0].ContextMap()
	if refused["file"] != anchors || refused["reason"] != FileMalformed || refused["role"] != roleAnchors || refused["hint"] == "" {
		t.Fatalf("refusal log = %v", refused)
	}
	if h.fileErrors(FileMalformed) != 1 {
		t.Fatal("the refusal is not counted")
	}
	h.expectUnchanged(RootCertName, roots)
	if _, bad := h.mgr.NameErrors()[RootCertName]; bad {
		t.Fatal("ROOTCA reported unservable while it is served")
	}

	// An empty file means no anchors.
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": []byte("\n")})
	h.waitSecret(RootCertName, func(*Secret) bool { return rootsAre(h.mgr, root) })
	if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(RootCertName)); got != float64(root.Cert.NotAfter.Unix()) {
		t.Fatalf("ROOTCA expiry metric = %v, want the mounted root's", got)
	}

	// The mounted root is authoritative: a new one replaces the old at
	// once, with no overlap; anchors stay after it.
	filewatchtest.KubeletWrite(t, anchorsDir, map[string][]byte{"anchors.pem": ra.CertPEM})
	h.waitSecret(RootCertName, func(*Secret) bool { return rootsAre(h.mgr, root, ra) })
	next := testpki.NewRoot(t, "next mounted root")
	filewatchtest.KubeletWrite(t, h.mgr.cfg.MountedCertDir, mountedFiles(next, next.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/web"}})))
	h.waitSecret(RootCertName, func(*Secret) bool { return rootsAre(h.mgr, next, ra) })
}

func TestSPIFFETrustBundles(t *testing.T) {
	root := testpki.NewRoot(t, "mesh root")
	ra, rb, rb2 := testpki.NewRoot(t, "root of a.example"), testpki.NewRoot(t, "root of b.example"), testpki.NewRoot(t, "next root of b.example")
	// files writes the bundle files, given in reverse order, and the
	// anchors file (the root of b.example, as a mesh would add it).
	files := func(t *testing.T) (pathB string, bundleFiles []TrustBundleFile, anchors string) {
		dir := t.TempDir()
		pathA := writeFile(t, dir, "a.pem", ra.CertPEM)
		pathB = writeFile(t, dir, "b.pem", rb.CertPEM)
		return pathB, []TrustBundleFile{{TrustDomain: "b.example", Path: pathB}, {TrustDomain: "a.example", Path: pathA}},
			writeFile(t, dir, "anchors.pem", rb.CertPEM)
	}

	type bundle struct {
		td    string
		roots []*testpki.CA
	}
	bundlesAre := func(sec *Secret, want ...bundle) bool {
		if len(sec.Bundles) != len(want) {
			return false
		}
		for i, w := range want {
			b := sec.Bundles[i]
			var pemWant []byte
			for _, r := range w.roots {
				pemWant = append(pemWant, r.CertPEM...)
			}
			if b.TrustDomain != w.td || !bytes.Equal(b.RootsPEM, pemWant) || len(b.Roots) != len(w.roots) {
				return false
			}
		}
		return true
	}
	own := bundle{"cluster.local", []*testpki.CA{root, rb}}
	a, b := bundle{"a.example", []*testpki.CA{ra}}, bundle{"b.example", []*testpki.CA{rb}}

	t.Run("ROOTCA in the SPIFFE form", func(t *testing.T) {
		pathB, bundleFiles, anchors := files(t)
		h := trustHarness(t, root, func(c *Config) {
			c.SPIFFEValidator, c.TrustBundleFiles, c.TrustAnchorsFile = true, bundleFiles, anchors
		})
		// The own trust domain first (its roots and anchors), then the
		// others by name, whatever the order of the flags.
		sec := h.waitSecret(RootCertName, func(s *Secret) bool { return bundlesAre(s, own, a, b) })
		if !bytes.Equal(sec.TrustedCAPEM, slices.Concat(root.CertPEM, rb.CertPEM)) {
			t.Fatal("TrustedCAPEM is not the own trust domain's roots (what OUTPUT_CERTS writes)")
		}
		if !sameCerts(sec.Certs, []*x509.Certificate{root.Cert, rb.Cert, ra.Cert}) {
			t.Fatalf("Certs = %v, want every root once", subjects(sec.Certs))
		}
		if _, ok := h.mgr.Snapshot().Get(AllBundlesName); ok {
			t.Fatal("ALL published though no stream asked for it")
		}

		// A bundle file changes: published; broken: the previous stays.
		filewatchtest.RenameOver(t, pathB, slices.Concat(rb.CertPEM, rb2.CertPEM))
		sec = h.waitSecret(RootCertName, func(s *Secret) bool {
			return bundlesAre(s, own, a, bundle{"b.example", []*testpki.CA{rb, rb2}})
		})
		filewatchtest.RenameOver(t, pathB, []byte("not PEM"))
		h.eventually("the refusal", func() bool {
			return h.logs.FilterMessage("trust file refused; keeping its previous content").FilterField(zap.String("trust_domain", "b.example")).Len() == 1
		})
		h.expectUnchanged(RootCertName, sec)
	})

	t.Run("ALL on demand, ROOTCA stays trusted_ca", func(t *testing.T) {
		_, bundleFiles, _ := files(t)
		h := trustHarness(t, root, func(c *Config) { c.TrustBundleFiles = bundleFiles })
		sec := h.waitSecret(RootCertName, func(s *Secret) bool { return rootsAre(h.mgr, root) })
		if len(sec.Bundles) != 0 {
			t.Fatal("ROOTCA has bundles without the SPIFFE validator setting")
		}
		if err := h.mgr.CheckName(AllBundlesName); err != nil {
			t.Fatalf("CheckName(ALL) = %v", err)
		}
		h.mgr.SetDemand([]string{WorkloadCertName, AllBundlesName})
		all := h.waitSecret(AllBundlesName, func(s *Secret) bool {
			return bundlesAre(s, bundle{"cluster.local", []*testpki.CA{root}}, a, b)
		})
		if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(AllBundlesName)); got != float64(all.NotAfter().Unix()) {
			t.Fatalf("ALL expiry metric = %v", got)
		}
		h.mgr.SetDemand([]string{WorkloadCertName})
		h.eventually("ALL to be dropped", func() bool {
			_, ok := h.mgr.Snapshot().Get(AllBundlesName)
			return !ok
		})
		if n := testutil.CollectAndCount(h.metrics.CertExpiryTimestamp); n != 2 {
			t.Fatalf("%d expiry series after ALL was dropped, want default and ROOTCA", n)
		}
	})
}

func TestNewRejectsBadTrustConfig(t *testing.T) {
	id, _ := pki.WorkloadID("cluster.local", "ns", "sa")
	ca := &fakeCA{}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative overlap", Config{ID: id, Signer: ca, RootOverlap: -time.Second}, "overlap"},
		{"bundle for the own trust domain", Config{ID: id, Signer: ca, TrustBundleFiles: []TrustBundleFile{{"cluster.local", "/b.pem"}}}, "trust anchors"},
		{"bundle twice", Config{ID: id, Signer: ca, TrustBundleFiles: []TrustBundleFile{{"b.example", "/b.pem"}, {"b.example", "/c.pem"}}}, "twice"},
		{"bad trust domain", Config{ID: id, Signer: ca, TrustBundleFiles: []TrustBundleFile{{"B.example", "/b.pem"}}}, "invalid trust domain"},
		{"bundle without path", Config{ID: id, Signer: ca, TrustBundleFiles: []TrustBundleFile{{"b.example", ""}}}, "empty path"},
		{"spiffe form without identity", Config{MountedCertDir: "/certs", SPIFFEValidator: true}, "trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

const untrustedRootWarning = "ca answer ends in a root not trusted before; peers that do not trust it yet refuse this workload"

func TestManagerWarnsWhenTheCAMovesToAnUntrustedRoot(t *testing.T) {
	other := testpki.NewRootValid(t, "unannounced root", start.Add(-time.Hour), start.Add(365*24*time.Hour))
	h := newHarness(t, nil)
	h.waitCall()
	h.waitPublished()
	h.ca.then(signBy(other, 10*time.Second))
	h.advanceToNextAttempt()
	h.waitPublished()
	if !rootsAre(h.mgr, other, h.ca.root) {
		t.Fatalf("ROOTCA = %v, want the new root, then the old one retiring", subjects(servedRoots(h.mgr)))
	}
	h.waitParked() // logged after the publish
	warned := h.logs.FilterMessage(untrustedRootWarning).All()
	if len(warned) != 1 || warned[0].ContextMap()["sha256"] != fingerprint(other.Cert) || warned[0].ContextMap()["hint"] == "" {
		t.Fatalf("warnings = %v", warned)
	}
}

// retiresAfter reports whether at is want, or up to a second later: until
// moves the fake clock while the CSR that switched roots is in flight.
func retiresAfter(at, want time.Time) bool {
	d := at.Sub(want)
	return d >= 0 && d < time.Second
}
