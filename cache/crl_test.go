package cache

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/filewatch/filewatchtest"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// makeCRL returns a PEM CRL of issuer numbered number, valid from
// thisUpdate to nextUpdate, revoking serials.
func makeCRL(t *testing.T, issuer *testpki.CA, number int64, thisUpdate, nextUpdate time.Time, serials ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: thisUpdate, NextUpdate: nextUpdate}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: thisUpdate, ReasonCode: 1})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer.Cert, issuer.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// rootCA returns the published ROOTCA, or nil.
func rootCA(m *Manager) *Secret {
	sec, _ := m.Snapshot().Get(RootCertName)
	return sec
}

// crlServed reports whether ROOTCA serves exactly crl in its crl field.
func crlServed(m *Manager, crl []byte) bool {
	sec := rootCA(m)
	return sec != nil && bytes.Equal(sec.CRLPEM, crl)
}

// crlHarness runs a CA-backed Manager whose CRL file, dir/crl.pem, does
// not exist yet.
func crlHarness(t *testing.T, mutate func(*Config), first ...answer) (*harness, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "crl.pem")
	h := newHarness(t, func(c *Config) {
		c.CRLFile, c.FileDebounce = path, fileDebounce
		if mutate != nil {
			mutate(c)
		}
	}, first...)
	// Status counts an issue before the publish: wait for both.
	h.until("the first certificate", func() bool {
		_, served := h.mgr.Snapshot().Get(WorkloadCertName)
		return h.mgr.Status().Issued == 1 && served
	})
	return h, path
}

func TestCRLFileIsServedAndBadFilesAreRefused(t *testing.T) {
	h, path := crlHarness(t, nil)
	first := makeCRL(t, h.ca.root, 1, start.Add(-time.Minute), start.Add(24*time.Hour))
	filewatchtest.RenameOver(t, path, first)
	h.until("the CRL served in ROOTCA", func() bool { return crlServed(h.mgr, first) })
	if sec := rootCA(h.mgr); sec.OnlyVerifyLeafCRL {
		t.Fatal("OnlyVerifyLeafCRL set although the root's CRL covers every CA of the chain")
	}
	served := rootCA(h.mgr)

	// Half a CRL: refused as malformed, the previous CRL stays.
	next := makeCRL(t, h.ca.root, 2, start, start.Add(24*time.Hour), big.NewInt(7))
	filewatchtest.RenameOver(t, path, next[:len(next)/2])
	h.until("the malformed file refused", func() bool {
		return h.logs.FilterMessage("trust file refused; keeping its previous content").FilterField(zap.String("role", roleCRL)).Len() == 1
	})
	if got := testutil.ToFloat64(h.metrics.FileErrors.WithLabelValues(FileMalformed)); got != 1 {
		t.Fatalf("file_errors_total{malformed} = %v, want 1", got)
	}

	// A CRL of another CA: refused with what to do, counted, previous kept.
	foreign := testpki.NewRoot(t, "another CA")
	filewatchtest.RenameOver(t, path, append(makeCRL(t, h.ca.root, 3, start, start.Add(time.Hour)), makeCRL(t, foreign, 1, start, start.Add(time.Hour))...))
	h.until("the foreign CRL refused", func() bool { return h.logs.FilterMessage("crl file refused; keeping the previous crls").Len() == 1 })
	line := h.logs.FilterMessage("crl file refused; keeping the previous crls").All()[0].ContextMap()
	if line["file"] != path || line["reason"] != FileCRLUntrusted || line["hint"] == "" ||
		line["error"] != `CRL 2 of 2 (issuer "CN=another CA,O=sdsagent test", number 1) is not signed by a trusted root or an intermediate of the workload's chain` {
		t.Fatalf("refusal log = %v", line)
	}
	if got := testutil.ToFloat64(h.metrics.FileErrors.WithLabelValues(FileCRLUntrusted)); got != 1 {
		t.Fatalf("file_errors_total{crl_untrusted} = %v, want 1", got)
	}
	if rootCA(h.mgr) != served {
		t.Fatal("ROOTCA changed after refused CRL files")
	}

	// A good file is served again.
	filewatchtest.RenameOver(t, path, next)
	h.until("the new CRL served", func() bool { return crlServed(h.mgr, next) })
}

func TestStaleCRLIsServedWithWarningAndMetric(t *testing.T) {
	h, path := crlHarness(t, func(c *Config) { c.TTL = 24 * time.Hour })
	crl := makeCRL(t, h.ca.root, 1, start.Add(-time.Minute), start.Add(time.Hour))
	filewatchtest.RenameOver(t, path, crl)
	h.until("the CRL served", func() bool { return crlServed(h.mgr, crl) })
	if got := testutil.ToFloat64(h.metrics.CRLStale); got != 0 {
		t.Fatalf("crl_stale = %v before NextUpdate, want 0", got)
	}
	if h.logs.FilterMessage("crl past its next update; still serving it").Len() != 0 {
		t.Fatal("warned before NextUpdate")
	}

	// The stale check sleeps at most a wake interval (a minute) at a time.
	h.clock.Set(start.Add(time.Hour + time.Minute))
	deadline := time.Now().Add(waitLimit)
	for h.logs.FilterMessage("crl past its next update; still serving it").Len() != 1 || testutil.ToFloat64(h.metrics.CRLStale) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no stale warning; logs: %v", h.logs.All())
		}
		h.waitParked()
		h.clock.Advance(time.Minute)
	}
	line := h.logs.FilterMessage("crl past its next update; still serving it").All()[0].ContextMap()
	if line["file"] != path || line["hint"] == "" || line["issuer"] != h.ca.root.Cert.Subject.String() {
		t.Fatalf("stale log = %v", line)
	}
	if !crlServed(h.mgr, crl) {
		t.Fatal("the stale CRL is no longer served")
	}

	// A fresh CRL clears the gauge.
	fresh := makeCRL(t, h.ca.root, 2, h.clock.Now(), h.clock.Now().Add(time.Hour))
	filewatchtest.RenameOver(t, path, fresh)
	h.until("the fresh CRL served and the gauge cleared", func() bool {
		return crlServed(h.mgr, fresh) && testutil.ToFloat64(h.metrics.CRLStale) == 0
	})
}

func TestOwnLeafInCRLRenewsAtOnce(t *testing.T) {
	h, path := crlHarness(t, nil) // TTL 1h: renewal is due in 30 minutes
	old := h.current().Certs[0]
	filewatchtest.RenameOver(t, path, makeCRL(t, h.ca.root, 1, start.Add(-time.Minute), start.Add(24*time.Hour), big.NewInt(99), old.SerialNumber))
	h.until("a renewal at once", func() bool {
		sec, _ := h.mgr.Snapshot().Get(WorkloadCertName)
		return h.mgr.Status().Issued == 2 && sec.Certs[0].SerialNumber.Cmp(old.SerialNumber) != 0
	})
	if took := h.clock.Now().Sub(start); took > time.Minute {
		t.Fatalf("renewed %s after start, want at once (the regular renewal is due after 30 minutes)", took)
	}
	lines := h.logs.FilterMessage("workload certificate is revoked; renewing it at once").All()
	if len(lines) != 1 || lines[0].ContextMap()["serial"] != old.SerialNumber.Text(16) || lines[0].ContextMap()["reason_code"] != int64(1) {
		t.Fatalf("revocation logs = %v", lines)
	}
	// The new certificate is not revoked: a CRL with the same entries
	// does not renew it again. Each CRL is checked against the leaf as it
	// is loaded, so the check of the first is done once the second is
	// served.
	for n := int64(2); n <= 3; n++ {
		crl := makeCRL(t, h.ca.root, n, start.Add(-time.Minute), start.Add(24*time.Hour), big.NewInt(99), old.SerialNumber)
		filewatchtest.RenameOver(t, path, crl)
		h.until("the later CRL served", func() bool { return crlServed(h.mgr, crl) })
	}
	if n := h.logs.FilterMessage("workload certificate is revoked; renewing it at once").Len(); n != 1 {
		t.Fatalf("%d revocations of the workload certificate, want 1: the new one was found revoked", n)
	}
	if st := h.mgr.Status(); st.Issued != 2 {
		t.Fatalf("renewed again: %+v", st)
	}
}

func TestCRLFormsForEnvoysValidators(t *testing.T) {
	root := testpki.NewRootValid(t, "test root", start.Add(-24*time.Hour), start.Add(3650*24*time.Hour))
	inter := root.NewIntermediate(t, "mesh intermediate")
	interCRL := makeCRL(t, inter, 1, start.Add(-time.Minute), start.Add(24*time.Hour))
	rootCRL := makeCRL(t, root, 1, start.Add(-time.Minute), start.Add(24*time.Hour))

	t.Run("trusted_ca form checks leaves only without the root's CRL", func(t *testing.T) {
		h, path := crlHarness(t, nil, signBy(inter, 0))
		filewatchtest.RenameOver(t, path, interCRL)
		h.until("the CRL served", func() bool { return crlServed(h.mgr, interCRL) })
		if !rootCA(h.mgr).OnlyVerifyLeafCRL {
			t.Fatal("OnlyVerifyLeafCRL not set: Envoy would refuse every chain, the root has no CRL")
		}
		both := append(append([]byte(nil), rootCRL...), interCRL...)
		filewatchtest.RenameOver(t, path, both)
		h.until("both CRLs served", func() bool { return crlServed(h.mgr, both) })
		if rootCA(h.mgr).OnlyVerifyLeafCRL {
			t.Fatal("OnlyVerifyLeafCRL set although every CA has its CRL")
		}
	})
	t.Run("SPIFFE form has the CRLs in the bundle only when they cover every CA", func(t *testing.T) {
		h, path := crlHarness(t, func(c *Config) { c.SPIFFEValidator = true }, signBy(inter, 0))
		filewatchtest.RenameOver(t, path, interCRL)
		h.until("the CRL left out with a warning", func() bool {
			return h.logs.FilterMessage("crls left out of the spiffe validator form; it would refuse every peer").Len() == 1
		})
		if sec := rootCA(h.mgr); len(sec.Bundles) == 0 || len(sec.Bundles[0].CRLPEM) != 0 || len(sec.CRLPEM) != 0 {
			t.Fatalf("SPIFFE ROOTCA carries a CRL that does not cover the root: %+v", sec.Bundles)
		}
		both := append(append([]byte(nil), rootCRL...), interCRL...)
		filewatchtest.RenameOver(t, path, both)
		h.until("both CRLs in the own bundle", func() bool {
			sec := rootCA(h.mgr)
			return len(sec.Bundles) > 0 && bytes.Equal(sec.Bundles[0].CRLPEM, both)
		})
		if sec := rootCA(h.mgr); sec.Bundles[0].TrustDomain != "cluster.local" || len(sec.CRLPEM) != 0 {
			t.Fatalf("CRLs in bundle %q, crl field %d bytes; want the own bundle only", sec.Bundles[0].TrustDomain, len(sec.CRLPEM))
		}
	})
}
