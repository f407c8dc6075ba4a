package cfsslclient_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/cache"
	"github.com/sdsagent/sdsagent/internal/cfsslclient"
	"github.com/sdsagent/sdsagent/internal/cfsslclient/cfssltest"
	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// observedSigner reports the outcome of every Sign, so a test waits on
// the CA call instead of on time.
type observedSigner struct {
	cache.Signer
	results chan error
}

func (o *observedSigner) Sign(ctx context.Context, csr []byte, ttl time.Duration) ([]string, error) {
	chain, err := o.Signer.Sign(ctx, csr, ttl)
	o.results <- err
	return chain, err
}

// managed is a cache.Manager whose CA is a real cfssl serve, on a fake
// clock that starts now (CFSSL stamps certificates with the real time).
type managed struct {
	t      *testing.T
	srv    *cfssltest.Server
	mgr    *cache.Manager
	clock  *clocktest.Fake
	signer *observedSigner
	logs   *observer.ObservedLogs
}

func startManaged(t *testing.T, profile string, ttl time.Duration) *managed {
	t.Helper()
	srv := cfssltest.Start(t, cfssltest.Options{TLS: true, Intermediate: true})
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	client := newClient(t, cfsslclient.Config{URL: srv.URL, RootCertFile: srv.RootFile, ServerName: cfssltest.ServerName, Profile: profile, Logger: log})
	m := &managed{t: t, srv: srv, clock: clocktest.New(time.Now()), logs: logs,
		signer: &observedSigner{Signer: client, results: make(chan error, 16)}}
	id, err := pki.WorkloadID("cluster.local", "shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	m.mgr, err = cache.New(cache.Config{
		ID: id, TTL: ttl, GraceRatio: 0.5, GraceJitter: 0.01, Rand: func() float64 { return 0 },
		Signer: m.signer, Clock: m.clock, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return m
}

// call waits for the next CA call and returns its outcome.
func (m *managed) call() error {
	m.t.Helper()
	select {
	case err := <-m.signer.results:
		return err
	case <-time.After(waitLimit):
		m.t.Fatal("the manager did not call CFSSL")
		return nil
	}
}

// parked waits until the manager sleeps on the clock until its next CSR.
// An attempt holds a timer of its own (cache.Config.AttemptTimeout), so a
// timer alone does not mean parked: the attempt has ended once the manager
// has scheduled the next one after it.
//
// The manager schedules the next CSR (its status) before it sets the
// timer it sleeps on, so checking at every timer change sees both.
func (m *managed) parked() time.Time {
	m.t.Helper()
	if !m.clock.WaitUntil(func() bool {
		st := m.mgr.Status()
		return st.NextRenewal.After(st.LastAttempt) && m.clock.Timers() > 0
	}, waitLimit) {
		m.t.Fatalf("manager did not finish its attempt and wait on a timer: status %+v, %d timers", m.mgr.Status(), m.clock.Timers())
	}
	return m.mgr.Status().NextRenewal
}

// renewTime is when the manager renews leaf: half its lifetime, counted
// from when the CSR was sent since CFSSL backdates NotBefore.
func (m *managed) renewTime(leaf *x509.Certificate) time.Time {
	from := leaf.NotBefore
	if sent := m.mgr.Status().LastAttempt; sent.After(from) {
		from = sent
	}
	return cache.RenewTime(from, leaf.NotAfter, 0.5, 0.01, 0)
}

// served returns the served default certificate chain.
func (m *managed) served() *cache.Secret {
	m.t.Helper()
	sec, ok := m.mgr.Snapshot().Get(cache.WorkloadCertName)
	if !ok {
		m.t.Fatal("no default secret served")
	}
	return sec
}

func TestManagerIssuesAndRotatesWithCFSSL(t *testing.T) {
	m := startManaged(t, cfssltest.ProfileWorkload, time.Hour)
	if err := m.call(); err != nil {
		t.Fatal(err)
	}
	next := m.parked()
	first := m.served()
	if first.Certs[0].URIs[0].String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("leaf identity %v", first.Certs[0].URIs)
	}
	if len(first.Certs) != 2 || !first.Certs[1].Equal(m.srv.Signer.Cert) {
		t.Fatalf("default chain has %d certificates, want the leaf and CFSSL's intermediate", len(first.Certs))
	}
	roots, ok := m.mgr.Snapshot().Get(cache.RootCertName)
	if !ok || len(roots.Certs) != 1 || !roots.Certs[0].Equal(m.srv.Root.Cert) {
		t.Fatal("ROOTCA is not the root of the root file")
	}
	if want := m.renewTime(first.Certs[0]); !next.Equal(want) {
		t.Fatalf("next renewal %s, want %s (half the certificate's lifetime)", next, want)
	}

	m.clock.Set(next)
	if err := m.call(); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	m.parked()
	second := m.served()
	if second.Certs[0].SerialNumber.Cmp(first.Certs[0].SerialNumber) == 0 {
		t.Fatal("renewal served the same certificate")
	}
	if got := m.mgr.Status().Issued; got != 2 {
		t.Fatalf("Issued = %d, want 2", got)
	}
}

func TestManagerServesLastGoodWhileCFSSLIsDown(t *testing.T) {
	m := startManaged(t, cfssltest.ProfileWorkload, time.Hour)
	if err := m.call(); err != nil {
		t.Fatal(err)
	}
	next := m.parked()
	first := m.served()

	m.srv.Stop()
	m.clock.Set(next)
	if err := m.call(); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("renewal with CFSSL down: err = %v", err)
	}
	retry := m.parked()
	if m.served() != first {
		t.Fatal("the last good certificate is no longer served")
	}
	if st := m.mgr.Status(); st.Failures != 1 || !strings.Contains(st.LastError, "cfssl serve is running") {
		t.Fatalf("status %+v", st)
	}

	m.srv.Restart()
	m.clock.Set(retry)
	if err := m.call(); err != nil {
		t.Fatalf("retry after CFSSL is back: %v", err)
	}
	m.parked()
	if m.served().Certs[0].SerialNumber.Cmp(first.Certs[0].SerialNumber) == 0 {
		t.Fatal("the manager did not recover")
	}
	if st := m.mgr.Status(); st.Failures != 0 || st.Issued != 2 {
		t.Fatalf("status after recovery %+v", st)
	}
}

func TestProfileExpiryBoundsTheLifetime(t *testing.T) {
	// The agent asks for a day; the profile grants ShortExpiry.
	m := startManaged(t, cfssltest.ProfileShort, 24*time.Hour)
	if err := m.call(); err != nil {
		t.Fatal(err)
	}
	next := m.parked()
	leaf := m.served().Certs[0]
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != cfssltest.ShortExpiry {
		t.Fatalf("lifetime %s, want the profile's %s", got, cfssltest.ShortExpiry)
	}
	// Renewal follows the certificate, not the TTL asked for.
	if want := m.renewTime(leaf); !next.Equal(want) {
		t.Fatalf("next renewal %s, want %s", next, want)
	}
	warned := m.logs.FilterMessage("cfssl profile sets the certificate lifetime").All()
	if len(warned) != 1 || warned[0].ContextMap()["profile_expiry"] != cfssltest.ShortExpiry {
		t.Fatalf("lifetime warning: %v", warned)
	}
	m.clock.Set(next)
	if err := m.call(); err != nil {
		t.Fatal(err)
	}
	m.parked()
	if n := m.logs.FilterMessage("cfssl profile sets the certificate lifetime").Len(); n != 1 {
		t.Fatalf("lifetime warning logged %d times, want once", n)
	}
}
