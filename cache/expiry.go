// This file holds what the renewal loop needs about time beyond the
// renewal time: the expired state of the workload certificate, the
// attempt timeout, and the reachability probe of the CA.

package cache

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Prober is an optional interface of a Signer that can tell whether its CA
// is reachable without sending a CSR (the Istio client watches its gRPC
// connection's state). When the Signer has it, the Manager uses it between
// attempts once the certificate is in the last tenth of its life or has
// expired, after an attempt that found the CA unreachable: the next CSR
// goes out the moment the CA is reachable again, while the CSRs themselves
// stay as far apart as RetryWait says. Its methods must be safe for
// concurrent use with Sign.
type Prober interface {
	// Reachable reports, without blocking, whether a connection to the CA
	// is up now.
	Reachable() bool
	// WaitReachable blocks until a connection to the CA is up and returns
	// nil, or returns ctx's error. It sends no CSR; between its connection
	// attempts it waits as its transport's reconnect backoff says, at
	// most RetryExpiredMax.
	WaitReachable(ctx context.Context) error
}

// clockStepTolerance is how far the wall clock may fall behind a timer
// before the loop takes it for a step back: NTP slews at most 500 ppm,
// 30 ms over the longest wake interval.
const clockStepTolerance = time.Second

// DefaultAttemptTimeout bounds one CSR attempt on the Manager's clock,
// whatever the Signer does with its context: a CA that accepts a call and
// never answers must not stop renewals.
const DefaultAttemptTimeout = 30 * time.Second

// workload returns the served workload certificate, if any.
func (m *Manager) workload() (*Secret, bool) {
	return m.store.Snapshot().Get(WorkloadCertName)
}

// expiredError says since when the workload certificate has expired and
// why it was not renewed, or returns nil if it is valid at now.
func (m *Manager) expiredError(cert *Secret, now time.Time) error {
	notAfter := cert.NotAfter()
	if now.Round(0).Before(notAfter) {
		return nil
	}
	ago := now.Round(0).Sub(notAfter).Truncate(time.Second)
	if m.cfg.MountedCertDir != "" {
		return fmt.Errorf("workload certificate expired at %s (%s ago): the files in %s are not renewed by the agent; replace them",
			notAfter.UTC().Format(time.RFC3339), ago, m.cfg.MountedCertDir)
	}
	st := m.Status()
	last := "none yet"
	if st.LastError != "" {
		last = fmt.Sprintf("%s (%d attempts failed)", st.LastError, st.Failures)
	}
	return fmt.Errorf("workload certificate expired at %s (%s ago); last renewal error: %s",
		notAfter.UTC().Format(time.RFC3339), ago, last)
}

// checkExpired keeps the expired gauge and, in the transition to expired,
// logs one error line and notifies subscribers (the snapshot is the same,
// but what may be served from it changed). It returns the NotAfter of a
// workload certificate not yet expired, to wake up at, or the zero time.
func (m *Manager) checkExpired(now time.Time) time.Time {
	cert, ok := m.workload()
	expired := ok && !now.Round(0).Before(cert.NotAfter())
	m.mu.Lock()
	was := m.expiredCert
	if expired {
		m.expiredCert = cert
	} else {
		m.expiredCert = nil
	}
	m.mu.Unlock()
	if !expired {
		m.cfg.Metrics.WorkloadCertExpired.Set(0)
		if ok {
			return cert.NotAfter()
		}
		return time.Time{}
	}
	m.cfg.Metrics.WorkloadCertExpired.Set(1)
	if was == cert {
		return time.Time{}
	}
	m.store.notify()
	// With mounted files the file registry logs their expiry.
	if m.cfg.MountedCertDir == "" {
		st := m.Status()
		m.log.Error("workload certificate expired; renewal keeps trying",
			zap.String("spiffe_id", m.cfg.ID.String()),
			zap.Time("not_after", cert.NotAfter()),
			zap.String("last_error", st.LastError),
			zap.Int("failures", st.Failures),
			zap.Time("next_attempt", st.NextRenewal))
	}
	return time.Time{}
}

// attemptContext returns ctx bounded by AttemptTimeout on the Manager's
// clock (and, for Signers that look at the deadline, in real time), and
// the function that releases it.
func (m *Manager) attemptContext(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.AttemptTimeout)
	t := m.cfg.Clock.NewTimer(m.cfg.AttemptTimeout)
	done := make(chan struct{})
	go func() {
		select {
		case <-t.C():
			cancel()
		case <-done:
		}
	}()
	return ctx, func() {
		t.Stop()
		close(done)
		cancel()
	}
}

// probe runs p.WaitReachable in the background. up is closed if the CA
// became reachable; stop ends the probe and waits for it.
func probe(ctx context.Context, p Prober) (up <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if p.WaitReachable(ctx) == nil {
			close(ch)
		}
	}()
	return ch, func() {
		cancel()
		<-done
	}
}

// retryWait is RetryWaitFor for the current workload certificate.
func (m *Manager) retryWait(now, certRenewAt time.Time, failures int, f Failure, p RetryPolicy) time.Duration {
	var notBefore, notAfter time.Time
	if cur, ok := m.workload(); ok {
		notBefore, notAfter = cur.Certs[0].NotBefore, cur.NotAfter()
	}
	return RetryWaitFor(now, notBefore, notAfter, certRenewAt, failures, f, p, m.cfg.Rand())
}

// laterOf returns the later of a and b.
func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// inLastTenth reports whether the workload certificate is in the last
// tenth of its life or expired at now.
func (m *Manager) inLastTenth(now time.Time) bool {
	cur, ok := m.workload()
	return ok && InLastTenth(now, cur.Certs[0].NotBefore, cur.NotAfter())
}

// lastTenthAt returns when the workload certificate enters the last tenth
// of its life.
func (m *Manager) lastTenthAt() (time.Time, bool) {
	cur, ok := m.workload()
	if !ok {
		return time.Time{}, false
	}
	nb, na := cur.Certs[0].NotBefore.Round(0), cur.NotAfter().Round(0)
	return na.Add(-na.Sub(nb) / retryShareOfLeft), true
}

// stillUnreachable reports whether an attempt due at now is skipped
// because the probe still finds the CA unreachable. A CSR still goes out
// at least every RetryMax, in case the probe is wrong.
func (m *Manager) stillUnreachable(probing bool, p Prober, now, lastSent time.Time) bool {
	return probing && p != nil && !p.Reachable() && now.Round(0).Sub(lastSent.Round(0)) < m.cfg.RetryMax
}
