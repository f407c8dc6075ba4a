// This file is the renewal loop: when to send a CSR, one attempt (key,
// CSR, CA call, verification, publish), and what to log when it fails.

package cache

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// renew is the CA renewal loop of Run.
func (m *Manager) renew(ctx context.Context) {
	policy := RetryPolicy{Initial: m.cfg.RetryInitial, Max: m.cfg.RetryMax}
	prober, _ := m.cfg.Signer.(Prober)
	var (
		renewAt time.Time // zero: issue now
		// certRenewAt is the renewal time of the current certificate.
		certRenewAt time.Time
		// failures counts attempts failed in a row.
		failures int
		// holdUntil is the end of the CA's last pushback: no CSR before.
		holdUntil time.Time
		// lastSent is when the last CSR attempt started.
		lastSent time.Time
		// lastTrustRenewal is when a change of the CA root file last
		// caused a renewal; trustDue marks renewAt as such a renewal.
		lastTrustRenewal time.Time
		trustDue         bool
	)
	for {
		now := m.cfg.Clock.Now()
		m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.expire(now, chain) })
		certEnd := m.checkExpired(now)
		// After a failure, in the last tenth of the life or expired, with
		// the CA unreachable: watch for it to come back.
		probing := prober != nil && failures > 0 && m.inLastTenth(now) && !prober.Reachable()
		if renewAt.IsZero() || ShouldRenew(now, renewAt) {
			if !renewAt.IsZero() && m.stillUnreachable(probing, prober, now, lastSent) {
				// No CSR into a connection known to be down: the probe
				// goes on, and a CSR goes out the moment it succeeds, or
				// RetryMax after the last one in case the probe is wrong.
				renewAt = laterOf(lastSent.Add(m.cfg.RetryMax), holdUntil)
				m.setNextRenewal(renewAt)
				continue
			}
			if trustDue {
				lastTrustRenewal, trustDue = now, false
			}
			sent := now
			lastSent = now
			b, err := m.issue(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				failures++
				f := ClassifyFailure(err)
				now := m.cfg.Clock.Now()
				wait := m.retryWait(now, certRenewAt, failures, f, policy)
				renewAt = now.Add(wait)
				holdUntil = now.Add(f.Pushback)
				m.setNextRenewal(renewAt)
				m.logFailure(err, wait, f)
			} else {
				failures, holdUntil = 0, time.Time{}
				// CAs backdate NotBefore for clock skew (the dev CA by 10s,
				// others by minutes); counting the lifetime from when we
				// asked keeps a short TTL from renewing at once, forever.
				start := b.Leaf.NotBefore
				if sent.After(start) {
					start = sent
				}
				renewAt = RenewTime(start, b.Leaf.NotAfter, m.cfg.GraceRatio, m.cfg.GraceJitter, m.cfg.Rand())
				certRenewAt = renewAt
				m.setNextRenewal(renewAt)
			}
			continue
		}
		wakeAt := renewAt
		if at, ok := m.trust.nextRetirement(); ok && at.Before(wakeAt) {
			wakeAt = at
		}
		if !certEnd.IsZero() && certEnd.Before(wakeAt) {
			wakeAt = certEnd // to report the expiry at once
		}
		if at, ok := m.lastTenthAt(); ok && failures > 0 && prober != nil && now.Before(at) && at.Before(wakeAt) {
			wakeAt = at // to start probing
		}
		wait := wakeAt.Round(0).Sub(now.Round(0))
		if wait > m.cfg.WakeInterval {
			wait = m.cfg.WakeInterval
		}
		var (
			reachable <-chan struct{}
			stopProbe = func() {}
		)
		if probing {
			reachable, stopProbe = probe(ctx, prober)
		}
		m.parked.Store(true)
		t := m.cfg.Clock.NewTimer(wait)
		expected := now // the least wall-clock time at wake-up
		select {
		case <-ctx.Done():
			t.Stop()
			stopProbe()
			return
		case <-t.C():
			expected = now.Add(wait)
		case <-reachable:
			t.Stop()
			renewAt = time.Time{}
			if holdUntil.After(m.cfg.Clock.Now()) {
				renewAt = holdUntil // the CA's pushback still holds
			}
			m.log.Info("ca reachable again; renewing the workload certificate now")
		case <-m.caRootChanged:
			t.Stop()
			now := m.cfg.Clock.Now()
			at := laterOf(TrustRenewTime(now, lastTrustRenewal, TrustRenewMinInterval), holdUntil)
			if at.Before(renewAt) {
				renewAt, trustDue = at, true
				m.setNextRenewal(renewAt)
			}
			m.log.Info("ca root file changed; renewing the workload certificate",
				zap.String("file", m.cfg.CARootCertFile), zap.Time("renew_at", renewAt))
		case <-m.leafRevoked:
			t.Stop()
			renewAt = laterOf(m.cfg.Clock.Now(), holdUntil)
			m.setNextRenewal(renewAt)
		}
		m.parked.Store(false)
		stopProbe()
		// The timer ran its course on the monotonic clock; a wall clock
		// behind that was stepped back. Move the next attempt back as
		// much, so that renewal keeps to its schedule in real time.
		if back := expected.Round(0).Sub(m.cfg.Clock.Now().Round(0)); back > clockStepTolerance && !renewAt.IsZero() {
			renewAt = renewAt.Add(-back)
			if !certRenewAt.IsZero() {
				certRenewAt = certRenewAt.Add(-back)
			}
			if !holdUntil.IsZero() {
				holdUntil = holdUntil.Add(-back)
			}
			m.setNextRenewal(renewAt)
			m.log.Warn("wall clock went back; renewal schedule moved back as much",
				zap.Duration("jump", -back), zap.Time("next_attempt", renewAt))
		}
	}
}

func (m *Manager) setNextRenewal(at time.Time) {
	m.mu.Lock()
	m.status.NextRenewal = at
	m.mu.Unlock()
}

// caRootFileChanged is the sink of CARootCertFile: a change after the
// first read wakes the renewal loop.
func (m *Manager) caRootFileChanged(l fileLoad) {
	if l.firstAttempt {
		return
	}
	select {
	case m.caRootChanged <- struct{}{}:
	default:
	}
}

// issue makes one attempt: new key, CSR, CA call, verification, publish.
func (m *Manager) issue(ctx context.Context) (*pki.Bundle, error) {
	start := m.cfg.Clock.Now()
	m.mu.Lock()
	m.status.LastAttempt = start
	failures := m.status.Failures
	m.mu.Unlock()
	m.log.Debug("certificate request sent", zap.String("spiffe_id", m.cfg.ID.String()), zap.Int("failures_before", failures))

	actx, release := m.attemptContext(ctx)
	b, key, result, err := m.sign(actx)
	timedOut := actx.Err() != nil
	release()
	took := m.cfg.Clock.Now().Sub(start)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil && timedOut && result == metrics.ResultCAError {
		err = fmt.Errorf("no answer within %s: %w", m.cfg.AttemptTimeout, err)
	}
	m.cfg.Metrics.ObserveCSR(result, took)
	if err != nil {
		m.mu.Lock()
		m.status.LastError = err.Error()
		m.status.Failures++
		m.mu.Unlock()
		return nil, err
	}

	_, hadCert := m.store.Snapshot().Get(WorkloadCertName)
	// Status and counters first, so a subscriber woken by publish sees them.
	m.mu.Lock()
	m.status.Issued++
	m.status.LastIssued = m.cfg.Clock.Now()
	m.status.LastError = ""
	m.status.Failures = 0
	m.mu.Unlock()
	if hadCert {
		m.cfg.Metrics.Rotations.Inc()
	}
	// The chain and the roots it ends in, in one snapshot: ROOTCA always
	// trusts the served chain's root.
	cert := &Secret{
		Name:          WorkloadCertName,
		Kind:          TLSCertificate,
		CertChainPEM:  b.ChainPEM,
		PrivateKeyPEM: key,
		Certs:         append([]*x509.Certificate{b.Leaf}, b.Intermediates...),
		Source:        "ca",
	}
	m.updateTrust(cert, func(chain []*x509.Certificate) rootsUpdate { return m.trust.caAnswer(b.Roots, chain) })

	msg := "workload certificate issued"
	if hadCert {
		msg = "workload certificate rotated"
	}
	m.log.Info(msg,
		zap.String("spiffe_id", m.cfg.ID.String()),
		zap.String("serial", fmt.Sprintf("%x", b.Leaf.SerialNumber)),
		zap.Time("not_before", b.Leaf.NotBefore),
		zap.Time("not_after", b.Leaf.NotAfter),
		zap.Int("intermediates", len(b.Intermediates)),
		zap.Duration("csr_duration", took),
	)
	return b, nil
}

// sign produces a key and a verified bundle, or the metrics result and
// error of the step that failed.
func (m *Manager) sign(ctx context.Context) (*pki.Bundle, pki.PrivateKeyPEM, string, error) {
	key, err := pki.GenerateKey(m.cfg.KeyType)
	if err != nil {
		return nil, nil, metrics.ResultLocalError, err
	}
	csr, err := pki.NewCSR(key, m.cfg.ID)
	if err != nil {
		return nil, nil, metrics.ResultLocalError, err
	}
	keyPEM, err := pki.EncodePrivateKey(key)
	if err != nil {
		return nil, nil, metrics.ResultLocalError, err
	}
	pems, err := m.cfg.Signer.Sign(ctx, csr, m.cfg.TTL)
	if err != nil {
		return nil, nil, metrics.ResultCAError, fmt.Errorf("sign csr: %w", err)
	}
	chain, err := pki.ParseChain(pems)
	if err != nil {
		return nil, nil, metrics.ResultVerifyFailed, fmt.Errorf("CA answer refused: %w", &pki.VerifyError{Check: pki.CheckParse, Err: err})
	}
	b, err := pki.Verify(pki.VerifyInput{Chain: chain, Key: key.Public(), ID: m.cfg.ID, Now: m.cfg.Clock.Now()})
	if err != nil {
		return nil, nil, metrics.ResultVerifyFailed, fmt.Errorf("CA answer refused: %w", err)
	}
	return b, keyPEM, metrics.ResultSuccess, nil
}

func (m *Manager) logFailure(err error, retryIn time.Duration, f Failure) {
	fields := []zap.Field{
		zap.String("spiffe_id", m.cfg.ID.String()),
		zap.Error(err),
		zap.Duration("retry_in", retryIn),
	}
	if f.Overloaded {
		fields = append(fields, zap.Bool("ca_overloaded", true))
	}
	if f.Pushback > 0 {
		fields = append(fields, zap.Duration("ca_pushback", f.Pushback))
	}
	if h := hint(err); h != "" {
		fields = append(fields, zap.String("hint", h))
	}
	cur, ok := m.store.Snapshot().Get(WorkloadCertName)
	switch {
	case !ok:
		m.log.Error("certificate request failed; no workload certificate to serve yet", fields...)
	case !m.cfg.Clock.Now().Round(0).Before(cur.NotAfter()):
		// Its expiry was logged once as an error; /ready and the
		// expired gauge say the rest.
		m.log.Debug("certificate renewal failed; workload certificate expired", append(fields, zap.Time("not_after", cur.NotAfter()))...)
	default:
		m.log.Warn("certificate renewal failed; serving the previous certificate", append(fields, zap.Time("serving_not_after", cur.NotAfter()))...)
	}
}

// hint tells the operator what to look at for err.
func hint(err error) string {
	var ve *pki.VerifyError
	if errors.As(err, &ve) {
		switch ve.Check {
		case pki.CheckIdentity:
			return "the CA signed a different identity: check --trust-domain, --namespace and --service-account against the CA's configuration"
		case pki.CheckNotYetValid, pki.CheckExpired:
			return "check that this host's clock and the CA's are in sync (NTP)"
		case pki.CheckChain:
			return "the chain does not verify to its root: check the CA's signing certificate and its chain"
		default:
			return "the CA answered with something that is not a valid certificate chain for our key: check the CA"
		}
	}
	// The CA client's errors already say what to check.
	return ""
}
