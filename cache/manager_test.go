package cache

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 10 * time.Second

var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// answer is what the fake CA does with one CSR.
type answer func(ctx context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error)

// fakeCA signs CSRs with a testpki root at the fake clock's time, unless a
// scripted answer says otherwise.
type fakeCA struct {
	t     testing.TB
	root  *testpki.CA
	clock *clocktest.Fake
	calls chan struct{}
	// hanging is closed when a hang answer starts.
	hanging chan struct{}

	mu     sync.Mutex
	script []answer // consumed one per call; empty means sign normally
	ttls   []time.Duration
	// issuer signs when set (an intermediate: its chain up to its root
	// follows the leaf); backdate is how far NotBefore goes back, 10s
	// when zero.
	issuer   *testpki.CA
	backdate time.Duration
}

// use makes issuer sign from the next CSR on, as a CA switched to another
// (intermediate) CA does.
func (f *fakeCA) use(issuer *testpki.CA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issuer = issuer
}

func newFakeCA(t testing.TB, clk *clocktest.Fake) *fakeCA {
	return &fakeCA{
		t:       t,
		root:    testpki.NewRootValid(t, "test root", start.Add(-24*time.Hour), start.Add(3650*24*time.Hour)),
		clock:   clk,
		calls:   make(chan struct{}, 100),
		hanging: make(chan struct{}),
	}
}

func (f *fakeCA) then(answers ...answer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script, answers...)
}

func (f *fakeCA) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error) {
	defer func() { f.calls <- struct{}{} }()
	f.mu.Lock()
	f.ttls = append(f.ttls, ttl)
	next := signNormally
	if len(f.script) > 0 {
		next, f.script = f.script[0], f.script[1:]
	}
	f.mu.Unlock()
	csrs, err := x509.ParseCertificateRequest(pemBody(f.t, csrPEM))
	if err != nil {
		return nil, err
	}
	return next(ctx, f.t, f, csrs, ttl)
}

// hang makes the CA block until the caller gives up.
func hang(ctx context.Context, _ testing.TB, ca *fakeCA, _ *x509.CertificateRequest, _ time.Duration) ([]string, error) {
	close(ca.hanging)
	<-ctx.Done()
	return nil, ctx.Err()
}

// signNormally signs with the issuer (default the root) and answers as an
// Istio CA: leaf, then every CA certificate up to the root.
func signNormally(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
	ca.mu.Lock()
	issuer, backdate := ca.issuer, ca.backdate
	ca.mu.Unlock()
	if issuer == nil {
		issuer = ca.root
	}
	if backdate == 0 {
		backdate = 10 * time.Second
	}
	now := ca.clock.Now()
	leaf := issuer.SignCSR(t, csr, now.Add(-backdate), now.Add(ttl))
	chain := []string{string(testpki.EncodeCert(leaf.Raw))}
	for c := issuer; c != nil; c = c.Parent {
		chain = append(chain, string(c.CertPEM))
	}
	return chain, nil
}

func pemBody(t testing.TB, p []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(p)
	if block == nil {
		t.Fatal("CSR is not PEM")
	}
	return block.Bytes
}

type harness struct {
	t       *testing.T
	clock   *clocktest.Fake
	ca      *fakeCA
	mgr     *Manager
	updates <-chan struct{}
	logs    *observer.ObservedLogs
	metrics *metrics.Metrics
	id      pki.ID
	done    chan error
	cancel  context.CancelFunc
}

func newHarness(t *testing.T, mutate func(*Config), first ...answer) *harness {
	t.Helper()
	return newHarnessAt(t, start, mutate, first...)
}

// newHarnessAt is newHarness with the fake clock starting at now.
func newHarnessAt(t *testing.T, now time.Time, mutate func(*Config), first ...answer) *harness {
	t.Helper()
	clk := clocktest.New(now)
	core, logs := observer.New(zapcore.DebugLevel)
	id, err := pki.WorkloadID("cluster.local", "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clock: clk, ca: newFakeCA(t, clk), logs: logs, metrics: metrics.New(prometheus.NewRegistry()), id: id, done: make(chan error, 1)}
	cfg := Config{
		ID:          id,
		TTL:         time.Hour,
		GraceRatio:  0.5,
		GraceJitter: 0.01,
		Rand:        func() float64 { return 0 },
		Signer:      h.ca,
		Clock:       clk,
		Logger:      zap.New(core),
		Metrics:     h.metrics,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h.mgr, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.ca.then(first...)
	h.run()
	return h
}

// waitPublished waits for the next change notification.
func (h *harness) waitPublished() {
	h.t.Helper()
	select {
	case <-h.updates:
	case <-time.After(waitLimit):
		h.t.Fatal("no secret published")
	}
}

// waitCall waits for the CA to be called once.
func (h *harness) waitCall() {
	h.t.Helper()
	select {
	case <-h.ca.calls:
	case <-time.After(waitLimit):
		h.t.Fatal("CA not called")
	}
}

// waitParked waits until the renewal loop sleeps on the clock (a CSR
// attempt in flight holds a timer of its own).
func (h *harness) waitParked() time.Time {
	h.t.Helper()
	// The loop marks itself parked, then sets the timer it sleeps on: a
	// check at every timer change sees both.
	if !h.clock.WaitUntil(func() bool { return h.clock.Timers() > 0 && h.mgr.parked.Load() }, waitLimit) {
		h.t.Fatalf("the renewal loop does not park on a timer (%d timers)", h.clock.Timers())
	}
	at, _ := h.clock.NextDeadline()
	return at
}

// run subscribes to the manager's updates, takes the initial one and
// runs the manager until the test ends, when Run must return nil.
func (h *harness) run() {
	var cancelSub func()
	h.updates, cancelSub = h.mgr.Subscribe()
	<-h.updates // the initial notification
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.mgr.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				h.t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(waitLimit):
			h.t.Errorf("Run did not return after cancel")
		}
		cancelSub()
	})
}

func (h *harness) current() *Secret {
	h.t.Helper()
	sec, ok := h.mgr.Snapshot().Get(WorkloadCertName)
	if !ok {
		h.t.Fatal("no default secret")
	}
	return sec
}

// advanceToRenewal moves the clock to the manager's next deadline and
// waits for the CA call that follows.
func (h *harness) advanceToNextAttempt() {
	h.t.Helper()
	h.waitParked()
	h.clock.Set(h.mgr.Status().NextRenewal)
	h.waitCall()
}

func TestManagerIssuesVerifiedIdentity(t *testing.T) {
	h := newHarness(t, nil)
	h.waitCall()
	h.waitPublished()

	snap := h.mgr.Snapshot()
	def, ok := snap.Get(WorkloadCertName)
	if !ok {
		t.Fatal("default not published")
	}
	roots, ok := snap.Get(RootCertName)
	if !ok {
		t.Fatal("ROOTCA not published")
	}
	pair, err := tls.X509KeyPair(def.CertChainPEM, def.PrivateKeyPEM)
	if err != nil {
		t.Fatalf("served chain and key do not form a pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/default/sa/web" {
		t.Fatalf("leaf URIs = %v", leaf.URIs)
	}
	if len(pair.Certificate) != 1 {
		t.Fatalf("default chain has %d certificates, want the leaf only (root not repeated)", len(pair.Certificate))
	}
	if !bytes.Equal(roots.TrustedCAPEM, h.ca.root.CertPEM) {
		t.Fatal("ROOTCA is not the CA's root")
	}
	if err := h.mgr.Ready(); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	if h.ca.ttls[0] != time.Hour {
		t.Fatalf("requested TTL %s, want 1h", h.ca.ttls[0])
	}
	if got := testutil.ToFloat64(h.metrics.CSRRequests.WithLabelValues(metrics.ResultSuccess)); got != 1 {
		t.Fatalf("csr success count = %v", got)
	}
	if got := testutil.ToFloat64(h.metrics.CertExpiryTimestamp.WithLabelValues(WorkloadCertName)); got != float64(leaf.NotAfter.Unix()) {
		t.Fatalf("expiry metric = %v, want %d", got, leaf.NotAfter.Unix())
	}
	h.waitParked() // the issuance is logged after it is published
	if h.logs.FilterMessage("workload certificate issued").Len() != 1 {
		t.Fatalf("no issuance log line: %v", h.logs.All())
	}
	assertNoKeyInLogs(t, h.logs, def.PrivateKeyPEM)
}

func TestManagerRotatesBeforeExpiry(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Rand = func() float64 { return 1 } })
	h.waitCall()
	h.waitPublished()
	first := h.current()
	h.waitParked()

	// Renewal is due at NotAfter - (0.5+0.01) * lifetime, the lifetime
	// counted from when the CSR was sent (the CA backdated NotBefore).
	lifetime := first.Certs[0].NotAfter.Sub(start)
	wantRenew := first.Certs[0].NotAfter.Add(-time.Duration(0.51 * float64(lifetime)))
	if got := h.mgr.Status().NextRenewal; !got.Equal(wantRenew) {
		t.Fatalf("NextRenewal = %s, want %s", got, wantRenew)
	}

	// Just before the renewal time nothing happens.
	h.waitParked()
	h.clock.Set(wantRenew.Add(-time.Second))
	h.waitParked()
	select {
	case <-h.ca.calls:
		t.Fatal("renewed before the renewal time")
	default:
	}
	if h.current() != first {
		t.Fatal("secret changed before renewal")
	}

	h.clock.Set(wantRenew)
	h.waitCall()
	h.waitPublished()
	second := h.current()
	if second.Certs[0].SerialNumber.Cmp(first.Certs[0].SerialNumber) == 0 {
		t.Fatal("serial did not change on rotation")
	}
	if bytes.Equal(second.PrivateKeyPEM, first.PrivateKeyPEM) {
		t.Fatal("rotation reused the private key; want a new key per CSR")
	}
	if got := testutil.ToFloat64(h.metrics.Rotations); got != 1 {
		t.Fatalf("rotations = %v, want 1", got)
	}
	h.waitParked() // the rotation is logged after it is published
	if h.logs.FilterMessage("workload certificate rotated").Len() != 1 {
		t.Fatal("no rotation log line")
	}
}

func TestManagerShortTTLWithBackdatedCertDoesNotRenewAtOnce(t *testing.T) {
	// The fake CA backdates NotBefore by 10s, more than the whole TTL.
	h := newHarness(t, func(c *Config) { c.TTL = 4 * time.Second; c.GraceJitter = 0 })
	h.waitCall()
	h.waitPublished()
	h.waitParked()
	if got, want := h.mgr.Status().NextRenewal, start.Add(2*time.Second); !got.Equal(want) {
		t.Fatalf("NextRenewal = %s, want %s (half of the 4s TTL after the request)", got, want)
	}
}

func TestManagerRenewsAtOnceAfterHostSleep(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.TTL = 24 * time.Hour })
	h.waitCall()
	h.waitPublished()
	first := h.current()

	// The loop never sleeps longer than the wake interval...
	at := h.waitParked()
	if d := at.Sub(h.clock.Now()); d > DefaultWakeInterval {
		t.Fatalf("loop sleeps %s, longer than the wake interval", d)
	}
	// ...so when the wall clock jumps past the renewal time (a suspended
	// host waking up), the next wake-up renews.
	h.clock.Advance(13 * time.Hour)
	h.waitCall()
	h.waitPublished()
	if h.current() == first {
		t.Fatal("not renewed after the wall clock passed the renewal time")
	}
}

func TestManagerKeepsLastGoodSecretOnBadAnswer(t *testing.T) {
	otherRoot := testpki.NewRootValid(t, "other root", start.Add(-time.Hour), start.Add(3650*24*time.Hour))
	otherID := func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
		now := ca.clock.Now()
		other, err := url.Parse("spiffe://cluster.local/ns/default/sa/other")
		if err != nil {
			return nil, err
		}
		csr.URIs = []*url.URL{other}
		leaf := ca.root.SignCSR(t, csr, now.Add(-time.Second), now.Add(ttl))
		return []string{string(testpki.EncodeCert(leaf.Raw)), string(ca.root.CertPEM)}, nil
	}
	tests := []struct {
		name    string
		answer  answer
		wantLog string
	}{
		{"garbage PEM", func(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
			return []string{"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "junk"}, nil
		}, "parse"},
		{"empty chain", func(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
			return nil, nil
		}, "parse"},
		{"leaf for another key", func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
			now := ca.clock.Now()
			leaf := ca.root.IssueLeaf(t, testpki.LeafOptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/web"}, NotBefore: now.Add(-time.Second), NotAfter: now.Add(ttl)})
			return []string{string(leaf.CertPEM), string(ca.root.CertPEM)}, nil
		}, "key_mismatch"},
		{"leaf for another SPIFFE ID", otherID, "identity"},
		{"expired leaf", func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
			now := ca.clock.Now()
			leaf := ca.root.SignCSR(t, csr, now.Add(-2*time.Hour), now.Add(-time.Hour))
			return []string{string(testpki.EncodeCert(leaf.Raw)), string(ca.root.CertPEM)}, nil
		}, "expired"},
		{"not yet valid leaf", func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
			now := ca.clock.Now()
			leaf := ca.root.SignCSR(t, csr, now.Add(time.Hour), now.Add(2*time.Hour))
			return []string{string(testpki.EncodeCert(leaf.Raw)), string(ca.root.CertPEM)}, nil
		}, "not_yet_valid"},
		{"chain that does not verify", func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, ttl time.Duration) ([]string, error) {
			now := ca.clock.Now()
			leaf := ca.root.SignCSR(t, csr, now.Add(-time.Second), now.Add(ttl))
			return []string{string(testpki.EncodeCert(leaf.Raw)), string(otherRoot.CertPEM)}, nil
		}, "chain"},
		{"CA error", func(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
			return nil, errors.New("CA at istiod:15012 is unreachable")
		}, "unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.waitCall()
			h.waitPublished()
			good := h.current()
			goodRoots, _ := h.mgr.Snapshot().Get(RootCertName)

			h.ca.then(tt.answer)
			h.advanceToNextAttempt()
			h.waitParked()

			if h.current() != good {
				t.Fatal("the last good secret was replaced by a refused answer")
			}
			if roots, _ := h.mgr.Snapshot().Get(RootCertName); roots != goodRoots {
				t.Fatal("ROOTCA was replaced by a refused answer")
			}
			failed := h.logs.FilterMessage("certificate renewal failed; serving the previous certificate").All()
			if len(failed) != 1 {
				t.Fatalf("want one failure log line, got %v", h.logs.All())
			}
			if errMsg := failed[0].ContextMap()["error"]; !strings.Contains(fmt.Sprint(errMsg), tt.wantLog) {
				t.Fatalf("failure log error %q does not name %q", errMsg, tt.wantLog)
			}
			if st := h.mgr.Status(); st.Failures != 1 || st.LastError == "" {
				t.Fatalf("status = %+v, want one failure with its reason", st)
			}
			select {
			case <-h.updates:
				t.Fatal("subscribers were notified of a refused answer")
			default:
			}

			// The CA recovers: the next attempt serves a new certificate.
			h.advanceToNextAttempt()
			h.waitPublished()
			if h.current() == good {
				t.Fatal("not recovered after the CA answered correctly")
			}
			if st := h.mgr.Status(); st.Failures != 0 || st.LastError != "" {
				t.Fatalf("status after recovery = %+v", st)
			}
		})
	}
}

func TestManagerNotReadyUntilFirstCertificate(t *testing.T) {
	refuse := func(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
		return nil, errors.New("CA rejected the token read from /var/run/secrets/tokens/istio-token")
	}
	h := newHarness(t, nil, refuse, refuse)
	h.waitCall()
	h.waitParked()
	err := h.mgr.Ready()
	if err == nil || !strings.Contains(err.Error(), "istio-token") {
		t.Fatalf("Ready = %v, want the last CSR error", err)
	}
	if h.mgr.Snapshot().Len() != 0 {
		t.Fatal("something was published without a certificate")
	}
	if h.logs.FilterMessage("certificate request failed; no workload certificate to serve yet").Len() != 1 {
		t.Fatalf("missing failure log: %v", h.logs.All())
	}
	h.advanceToNextAttempt()
	h.advanceToNextAttempt()
	h.waitPublished()
	if err := h.mgr.Ready(); err != nil {
		t.Fatalf("Ready after recovery = %v", err)
	}
}

func TestManagerBacksOffAndNeverGivesUp(t *testing.T) {
	const initial, max = time.Second, 30 * time.Second
	fail := func(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
		return nil, errors.New("CA down")
	}
	const attempts = 25
	script := make([]answer, attempts)
	for i := range script {
		script[i] = fail
	}
	h := newHarness(t, func(c *Config) { c.RetryInitial, c.RetryMax = initial, max }, script...)
	h.waitCall()
	var waits []time.Duration
	for i := 1; i < attempts; i++ {
		h.waitParked()
		waits = append(waits, h.mgr.Status().NextRenewal.Sub(h.clock.Now()))
		// Half-way to the deadline nothing is sent: no tight loop.
		h.clock.Advance(waits[len(waits)-1] / 2)
		h.waitParked()
		select {
		case <-h.ca.calls:
			t.Fatalf("attempt %d sent before its backoff elapsed", i)
		default:
		}
		h.advanceToNextAttempt()
	}
	for i, w := range waits {
		ideal := float64(initial) * float64(int64(1)<<min(i, 10))
		lo := time.Duration(0.5 * min(ideal, float64(max)))
		if w < lo || w > time.Duration(1.5*float64(max)) {
			t.Fatalf("wait %d = %s, want between %s and %s", i, w, lo, time.Duration(1.5*float64(max)))
		}
	}
	if waits[len(waits)-1] < max/2 {
		t.Fatalf("backoff did not grow towards the cap: %v", waits)
	}
	// Still trying: the next success is served.
	h.advanceToNextAttempt()
	h.waitPublished()
	if got := testutil.ToFloat64(h.metrics.CSRRequests.WithLabelValues(metrics.ResultCAError)); got != attempts {
		t.Fatalf("ca_error count = %v, want %d", got, attempts)
	}
}

func TestManagerRunReturnsWhileCABlocks(t *testing.T) {
	h := newHarness(t, nil, hang)
	<-h.ca.hanging
	// Cleanup cancels and asserts Run returns nil.
}

func TestNewRejectsBadConfig(t *testing.T) {
	id, _ := pki.WorkloadID("cluster.local", "ns", "sa")
	ca := &fakeCA{}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no id", Config{Signer: ca}},
		{"no signer", Config{ID: id}},
		{"negative ttl", Config{ID: id, Signer: ca, TTL: -time.Second}},
		{"ratio over 1", Config{ID: id, Signer: ca, GraceRatio: 1.5}},
		{"ratio plus jitter over 1", Config{ID: id, Signer: ca, GraceRatio: 0.9, GraceJitter: 0.2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func assertNoKeyInLogs(t *testing.T, logs *observer.ObservedLogs, key []byte) {
	t.Helper()
	body := bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimPrefix(key, []byte("-----BEGIN PRIVATE KEY-----")), []byte("-----END PRIVATE KEY-----\n")))
	for _, e := range logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, string(body[:40])) || strings.Contains(line, "PRIVATE KEY") {
			t.Fatalf("private key material in log line %q", e.Message)
		}
	}
}
