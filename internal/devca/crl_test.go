package devca_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/devca"
	"github.com/sdsagent/sdsagent/internal/logtest"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// readCRL parses dir/crl.pem, which must hold exactly one CRL.
func readCRL(t *testing.T, dir string) *x509.RevocationList {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "crl.pem"))
	if err != nil {
		t.Fatalf("read crl.pem: %v", err)
	}
	crls, err := pki.ParseCRLs(data)
	if err != nil {
		t.Fatalf("parse crl.pem: %v", err)
	}
	if len(crls) != 1 {
		t.Fatalf("crl.pem holds %d CRLs, want 1", len(crls))
	}
	return crls[0]
}

// revokedReason returns the reason code of serial in crl, or -1 if it is
// not listed.
func revokedReason(crl *x509.RevocationList, serial *big.Int) int {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return e.ReasonCode
		}
	}
	return -1
}

func TestRevoke_SelfSignedRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	newCA(t, devca.Config{Dir: dir})
	root := readCert(t, dir, "root-cert.pem")

	first, second := big.NewInt(0xabcdef01), big.NewInt(0x1234)
	crl, err := devca.Revoke(devca.RevokeConfig{Dir: dir, Serial: "AB:CD:EF:01", Reason: "keyCompromise", CRLValidity: time.Hour})
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	onDisk := readCRL(t, dir)
	if string(onDisk.Raw) != string(crl.Raw) {
		t.Errorf("crl.pem is not the CRL Revoke returned")
	}
	if err := onDisk.CheckSignatureFrom(root); err != nil {
		t.Errorf("CRL not signed by the CA's root: %v", err)
	}
	if got := revokedReason(onDisk, first); got != 1 {
		t.Errorf("reason of the revoked serial = %d, want 1 (keyCompromise)", got)
	}
	if onDisk.Number.Int64() != 1 {
		t.Errorf("CRL number = %v, want 1", onDisk.Number)
	}
	if d := onDisk.NextUpdate.Sub(onDisk.ThisUpdate); d < time.Hour || d > time.Hour+time.Minute {
		t.Errorf("validity = %s, want about 1h", d)
	}

	if _, err := devca.Revoke(devca.RevokeConfig{Dir: dir, Serial: "0x1234", Reason: "superseded"}); err != nil {
		t.Fatalf("Revoke second: %v", err)
	}
	next := readCRL(t, dir)
	if next.Number.Cmp(onDisk.Number) <= 0 {
		t.Errorf("CRL number went from %v to %v, want it to increase", onDisk.Number, next.Number)
	}
	if revokedReason(next, first) != 1 || revokedReason(next, second) != 4 {
		t.Errorf("entries = %+v, want both serials with reasons 1 and 4", next.RevokedCertificateEntries)
	}
	// Revoking again keeps one entry and still publishes a newer CRL.
	if _, err := devca.Revoke(devca.RevokeConfig{Dir: dir, Serial: "1234", Reason: "keyCompromise"}); err != nil {
		t.Fatalf("Revoke again: %v", err)
	}
	again := readCRL(t, dir)
	if len(again.RevokedCertificateEntries) != 2 || revokedReason(again, second) != 4 || again.Number.Cmp(next.Number) <= 0 {
		t.Errorf("after revoking again: %d entries, reason %d, number %v; want 2 entries, the first reason kept, a newer number",
			len(again.RevokedCertificateEntries), revokedReason(again, second), again.Number)
	}
}

func TestRevoke_IntermediateSigns(t *testing.T) {
	rootDir := initRootDir(t, devca.RootConfig{Organization: "Example Corp"})
	dir := initMeshDir(t, rootDir, devca.IntermediateConfig{TrustDomain: meshA})
	if _, err := devca.Revoke(devca.RevokeConfig{Dir: dir, Serial: "42"}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	crl := readCRL(t, dir)
	if err := crl.CheckSignatureFrom(readCert(t, dir, "ca-cert.pem")); err != nil {
		t.Errorf("CRL not signed by the intermediate: %v", err)
	}
	if err := crl.CheckSignatureFrom(readCert(t, dir, "root-cert.pem")); err == nil {
		t.Errorf("CRL verifies with the root's key; want the intermediate's")
	}
	if revokedReason(crl, big.NewInt(0x42)) != 0 {
		t.Errorf("entries = %+v, want serial 42 with reason unspecified", crl.RevokedCertificateEntries)
	}
}

func TestRevoke_BadInput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	newCA(t, devca.Config{Dir: dir})
	empty := t.TempDir()
	tests := []struct {
		name string
		cfg  devca.RevokeConfig
		want string
	}{
		{"unknown reason", devca.RevokeConfig{Dir: dir, Serial: "1", Reason: "stolen"}, `unknown reason "stolen"; use one of`},
		{"not hex", devca.RevokeConfig{Dir: dir, Serial: "xyz"}, "not a positive hex number"},
		{"no serial", devca.RevokeConfig{Dir: dir}, "serial is required"},
		{"no CA in dir", devca.RevokeConfig{Dir: empty, Serial: "1"}, "holds no CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := devca.Revoke(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Revoke: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "crl.pem")); !os.IsNotExist(err) {
		t.Errorf("a refused revocation published crl.pem (stat: %v)", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) > 0 {
		t.Errorf("revoke in an empty dir wrote %d files, want none", len(entries))
	}
}

// TestRunCRL_ResignsBeforeNextUpdate drives a running CA's CRL loop with
// a fake clock: it publishes at start, not again before half the
// validity, then re-signs with a higher number long before NextUpdate;
// a CRL `ca revoke` published in between moves the schedule.
func TestRunCRL_ResignsBeforeNextUpdate(t *testing.T) {
	clk := clocktest.New(time.Now())
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newCA(t, devca.Config{Dir: dir, CRLValidity: 2 * time.Hour, Clock: clk})
	root := readCert(t, dir, "root-cert.pem")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ca.RunCRL(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunCRL returned %v, want nil", err)
		}
	})
	// park waits until the loop is parked on its timer, so it has
	// finished what the last move of the clock made it do.
	park := func() {
		t.Helper()
		if !clk.WaitForTimers(1, waitTimeout) {
			t.Fatal("RunCRL is not waiting on the clock")
		}
	}

	park()
	first := readCRL(t, dir)
	if err := first.CheckSignatureFrom(root); err != nil || first.Number.Int64() != 1 {
		t.Fatalf("first CRL: number %v, signature %v; want number 1 signed by the root", first.Number, err)
	}
	if ca.CRLPath() != filepath.Join(dir, "crl.pem") {
		t.Errorf("CRLPath = %s", ca.CRLPath())
	}

	// Up to just before half of the validity: polled, not re-signed.
	for range 59 {
		clk.Advance(time.Minute)
		park()
	}
	if got := readCRL(t, dir); got.Number.Int64() != 1 {
		t.Fatalf("CRL re-signed at %s, before half its validity: number %v", clk.Now().Sub(first.ThisUpdate), got.Number)
	}
	clk.Advance(time.Minute)
	park()
	second := readCRL(t, dir)
	if second.Number.Int64() != 2 {
		t.Fatalf("CRL number %v after half the validity, want 2", second.Number)
	}
	if !clk.Now().Before(first.NextUpdate) || !second.NextUpdate.After(first.NextUpdate) {
		t.Errorf("re-signed at %s with NextUpdate %s; want before the old NextUpdate %s and a later one", clk.Now(), second.NextUpdate, first.NextUpdate)
	}

	// A revocation published by `ca revoke` is kept and its CRL resets the
	// schedule: the loop does not sign again an hour after the old one.
	clk.Advance(30 * time.Minute)
	park()
	if _, err := devca.Revoke(devca.RevokeConfig{Dir: dir, Serial: "beef", CRLValidity: 2 * time.Hour, Clock: clk}); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		clk.Advance(time.Minute)
		park()
	}
	got := readCRL(t, dir)
	if got.Number.Int64() != 3 || revokedReason(got, big.NewInt(0xbeef)) != 0 {
		t.Fatalf("CRL number %v, entries %+v; want the revoke's CRL (3) still current", got.Number, got.RevokedCertificateEntries)
	}
	clk.Advance(30 * time.Minute)
	park()
	if got := readCRL(t, dir); got.Number.Int64() != 4 || revokedReason(got, big.NewInt(0xbeef)) != 0 {
		t.Fatalf("CRL number %v, entries %+v; want a re-signed CRL 4 that keeps the revocation", got.Number, got.RevokedCertificateEntries)
	}
}

// TestCRL_SigningCertWithoutCRLSign: an intermediate that may not sign
// CRLs gets a clear error from revoke and a warning from a running CA,
// which publishes nothing rather than retrying forever.
func TestCRL_SigningCertWithoutCRLSign(t *testing.T) {
	root := testpki.NewRoot(t, "root")
	key := testpki.NewKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "no crl sign"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, key.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	inter := &testpki.CA{Cert: cert, Key: key, CertPEM: testpki.EncodeCert(der), Parent: root}
	dir := filepath.Join(t.TempDir(), "ca")
	writePlugged(t, dir, inter, [][]byte{inter.CertPEM, root.CertPEM}, root.CertPEM)

	if _, err := devca.Revoke(devca.RevokeConfig{Dir: dir, Serial: "1"}); err == nil || !strings.Contains(err.Error(), "lacks the CRL sign key usage") {
		t.Fatalf("Revoke: %v, want the missing CRL sign key usage named", err)
	}
	log, logs := logtest.New(zapcore.InfoLevel)
	ca := newCA(t, devca.Config{Dir: dir, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ca.RunCRL(ctx) }()
	logs.WaitForMessage(t, "no crl published; revocation is unavailable", 1, waitTimeout)
	cancel()
	if n := logs.FilterMessage("no crl published; revocation is unavailable").Len(); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}
	if err := <-done; err != nil {
		t.Fatalf("RunCRL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "crl.pem")); !os.IsNotExist(err) {
		t.Fatalf("crl.pem published (stat %v)", err)
	}
}
