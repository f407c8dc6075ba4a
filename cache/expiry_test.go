package cache

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zapcore"

	"github.com/sdsagent/sdsagent/internal/clock/clocktest"
	"github.com/sdsagent/sdsagent/internal/testpki"
)

// signFor answers with a leaf valid for life from now, whatever TTL was
// asked (a CA that caps the TTL).
func signFor(life time.Duration) answer {
	return func(_ context.Context, t testing.TB, ca *fakeCA, csr *x509.CertificateRequest, _ time.Duration) ([]string, error) {
		now := ca.clock.Now()
		leaf := ca.root.SignCSR(t, csr, now.Add(-10*time.Second), now.Add(life))
		return []string{string(testpki.EncodeCert(leaf.Raw)), string(ca.root.CertPEM)}, nil
	}
}

func caDown(context.Context, testing.TB, *fakeCA, *x509.CertificateRequest, time.Duration) ([]string, error) {
	return nil, errors.New("CA at istiod:15012 is unreachable")
}

// errorLines counts log lines at error level or above.
func (h *harness) errorLines() int {
	return h.logs.FilterLevelExact(zapcore.ErrorLevel).Len()
}

func TestManagerExpiryIsAState(t *testing.T) {
	const expiredMsg = "workload certificate expired; renewal keeps trying"
	// The CA signs for 1s only; every renewal then fails. RetryInitial
	// 2s puts the first retry past NotAfter, so only the expiry itself
	// can wake the loop at NotAfter.
	h := newHarness(t, func(c *Config) {
		c.RetryInitial = 2 * time.Second
		c.Rand = func() float64 { return 0.999 }
	}, signFor(time.Second), caDown)
	h.waitCall()
	h.waitPublished()
	cert := h.current()
	notAfter := cert.NotAfter()
	if got := testutil.ToFloat64(h.metrics.WorkloadCertExpired); got != 0 {
		t.Fatalf("expired gauge = %v while valid", got)
	}
	h.advanceToNextAttempt() // the renewal fails
	if at := h.waitParked(); !at.Equal(notAfter) {
		t.Fatalf("loop wakes at %s, want the NotAfter %s (next retry %s)", at, notAfter, h.mgr.Status().NextRenewal)
	}
	if err := h.mgr.Ready(); err != nil {
		t.Fatalf("Ready = %v before expiry", err)
	}

	h.clock.Set(notAfter)
	h.waitPublished() // subscribers hear of the expiry
	h.waitParked()
	select {
	case <-h.ca.calls:
		t.Fatal("a CSR was sent at NotAfter although no retry was due")
	default:
	}
	if got := testutil.ToFloat64(h.metrics.WorkloadCertExpired); got != 1 {
		t.Fatalf("expired gauge = %v after NotAfter", got)
	}
	err := h.mgr.Ready()
	if err == nil {
		t.Fatal("Ready = nil with an expired workload certificate")
	}
	for _, want := range []string{"expired at " + notAfter.UTC().Format(time.RFC3339), "istiod:15012 is unreachable"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Ready = %q, want it to say %q", err, want)
		}
	}
	lines := h.logs.FilterMessage(expiredMsg).All()
	if len(lines) != 1 || lines[0].Level != zapcore.ErrorLevel {
		t.Fatalf("want one error line at expiry, got %v", h.logs.All())
	}
	errorsAtExpiry := h.errorLines()

	// Retries while expired: at most 2s apart, and no error line each.
	for range 5 {
		h.ca.then(caDown)
		h.waitParked()
		if wait := h.mgr.Status().NextRenewal.Sub(h.clock.Now()); wait > RetryExpiredMax {
			t.Fatalf("expired, yet the next attempt is %s away", wait)
		}
		h.advanceToNextAttempt()
	}
	h.waitParked()
	if got := h.errorLines(); got != errorsAtExpiry {
		t.Fatalf("%d more error lines while retrying: %v", got-errorsAtExpiry, h.logs.All())
	}
	if h.current() != cert {
		t.Fatal("the expired certificate was replaced without a new one")
	}

	// The CA is back: a valid certificate ends the state.
	h.advanceToNextAttempt()
	h.waitPublished()
	h.waitParked()
	if err := h.mgr.Ready(); err != nil {
		t.Fatalf("Ready after recovery = %v", err)
	}
	if got := testutil.ToFloat64(h.metrics.WorkloadCertExpired); got != 0 {
		t.Fatalf("expired gauge = %v after recovery", got)
	}
}

func TestMountedCertExpiryIsAState(t *testing.T) {
	clk := clocktest.New(start)
	dir := t.TempDir()
	root := testpki.NewRootValid(t, "root", start.Add(-24*time.Hour), start.Add(365*24*time.Hour))
	l := root.IssueLeaf(t, testpki.LeafOptions{NotBefore: start.Add(-10 * time.Minute), NotAfter: start.Add(time.Hour)})
	for name, content := range mountedFiles(root, l) {
		writeFile(t, dir, name, content)
	}
	h := newFileHarness(t, func(c *Config) {
		c.MountedCertDir, c.Signer, c.Clock = dir, nil, clk
	})
	h.waitServing(WorkloadCertName, l)
	h.eventually("ready", func() bool { return h.mgr.Ready() == nil })
	clk.Set(l.Cert.NotAfter.Add(time.Second))
	// The watcher may have read the clock just before Set and armed its
	// timer just after: move on until it fires.
	h.eventually("the expired gauge", func() bool {
		clk.Advance(time.Second)
		return testutil.ToFloat64(h.metrics.WorkloadCertExpired) == 1
	})
	err := h.mgr.Ready()
	if err == nil || !strings.Contains(err.Error(), "expired at") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Ready = %v, want expired, naming the directory", err)
	}
}

// fakeProber is a Signer with a Prober whose reachability the test sets.
type fakeProber struct {
	*fakeCA
	mu      sync.Mutex
	up      bool
	changed chan struct{} // closed and replaced when up changes
	waiting chan struct{} // receives when WaitReachable starts
}

func (p *fakeProber) Reachable() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up
}

func (p *fakeProber) WaitReachable(ctx context.Context) error {
	select {
	case p.waiting <- struct{}{}:
	default:
	}
	for {
		p.mu.Lock()
		up, ch := p.up, p.changed
		p.mu.Unlock()
		if up {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *fakeProber) set(up bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.up = up
	close(p.changed)
	p.changed = make(chan struct{})
}

func TestManagerRenewsAsSoonAsProberSeesTheCA(t *testing.T) {
	var p *fakeProber
	h := newHarness(t, func(c *Config) {
		p = &fakeProber{fakeCA: c.Signer.(*fakeCA), up: true, changed: make(chan struct{}), waiting: make(chan struct{}, 1)}
		c.Signer = p
		c.RetryInitial = 30 * time.Second
		c.Rand = func() float64 { return 0.999 }
	})
	h.waitCall()
	h.waitPublished()
	cert := h.current()
	h.waitParked()

	// In the last tenth of its life the CA goes down: the attempt finds it
	// unreachable, and the next one is due up to 30s later.
	lifetime := cert.NotAfter().Sub(cert.Certs[0].NotBefore)
	p.set(false)
	h.ca.then(caDown)
	h.clock.Set(cert.NotAfter().Add(-lifetime / 20))
	h.waitCall()
	h.waitParked()
	select {
	case <-p.waiting:
	case <-time.After(waitLimit):
		t.Fatal("the CA is unreachable in the last tenth, yet it is not probed")
	}
	if wait := h.mgr.Status().NextRenewal.Sub(h.clock.Now()); wait < 10*time.Second {
		t.Fatalf("next attempt in %s; want a long wait for this test", wait)
	}
	// While the probe finds it down, the retry time sends no CSR into
	// the dead connection.
	h.clock.Set(h.mgr.Status().NextRenewal)
	h.waitParked()
	select {
	case <-h.ca.calls:
		t.Fatal("a CSR was sent while the probe found the CA unreachable")
	default:
	}
	// The CA comes back: a CSR goes out without the clock moving.
	p.set(true)
	h.waitCall()
	h.waitPublished()
	if h.current() == cert {
		t.Fatal("not renewed when the CA came back")
	}

	// A CA that is reachable but refuses is not probed: the next attempt
	// waits for its time.
	h.waitParked()
	select {
	case <-p.waiting: // the probe started again after the skipped attempt
	default:
	}
	next := h.current()
	h.ca.then(caDown)
	h.clock.Set(next.NotAfter().Add(-lifetime / 20))
	h.waitCall()
	h.waitParked()
	select {
	case <-p.waiting:
		t.Fatal("probed a CA that is reachable")
	default:
	}
}

func TestManagerClockJumps(t *testing.T) {
	t.Run("forward past the renewal time renews within one wake interval", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.TTL = 24 * time.Hour })
		h.waitCall()
		h.waitPublished()
		first := h.current()
		h.waitParked()
		h.clock.Jump(13 * time.Hour) // the wall clock only: no timer fires
		h.clock.Advance(DefaultWakeInterval)
		h.waitCall()
		h.waitPublished()
		if h.current() == first {
			t.Fatal("not renewed after the wall clock jumped past the renewal time")
		}
	})
	t.Run("backward keeps the renewal schedule without a loop", func(t *testing.T) {
		h := newHarness(t, nil) // TTL 1h: renewal 30m after issuance
		h.waitCall()
		h.waitPublished()
		first := h.current()
		h.waitParked()
		planned := h.mgr.Status().NextRenewal
		h.clock.Jump(-20 * time.Minute)
		// Until the planned time has passed in real time, no CSR: the
		// loop wakes every minute and goes back to sleep.
		for h.clock.Now().Add(20 * time.Minute).Add(DefaultWakeInterval).Before(planned) {
			h.clock.Advance(DefaultWakeInterval)
			h.waitParked()
			select {
			case <-h.ca.calls:
				t.Fatalf("CSR sent %s before the planned renewal", planned.Sub(h.clock.Now().Add(20*time.Minute)))
			default:
			}
		}
		// Within one wake interval of the planned time in real time (10m
		// before it on the stepped-back wall clock), it renews.
		h.clock.Advance(2 * DefaultWakeInterval)
		h.waitCall()
		h.waitPublished()
		if h.current() == first {
			t.Fatal("not renewed")
		}
		// And then parks again for a whole renewal period: no loop.
		h.waitParked()
		if next := h.mgr.Status().NextRenewal.Sub(h.clock.Now()); next < 20*time.Minute {
			t.Fatalf("next renewal in %s after renewing", next)
		}
	})
	t.Run("backward while retrying does not stop the retries", func(t *testing.T) {
		h := newHarness(t, func(c *Config) {
			c.Rand = func() float64 { return 0.999 }
		}, signFor(time.Minute), caDown, caDown)
		h.waitCall()
		h.waitPublished()
		h.advanceToNextAttempt() // fails
		h.waitParked()
		wait := h.mgr.Status().NextRenewal.Sub(h.clock.Now())
		h.clock.Jump(-time.Hour)
		h.clock.Advance(wait)
		h.waitCall() // the retry, on time
	})
}
