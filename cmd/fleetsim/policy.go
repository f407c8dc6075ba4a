package main

import (
	"math"
	"time"

	"github.com/sdsagent/sdsagent/cache"
)

// Ours drives each agent with package cache's own functions, as
// cache.Manager's renewal loop calls them: RenewTime places renewal,
// ClassifyFailure reads what a failed CSR says about the CA,
// RetryWaitFor spaces failed attempts (RetryWait for a CA that is down,
// OverloadWait and the CA's pushback for one that refused for load),
// InLastTenth decides when the agent watches the CA's reachability (its
// Prober) and skips CSRs while the CA is known down.
type Ours struct {
	GraceRatio, GraceJitter float64
	Retry                   cache.RetryPolicy
	// Before drives the agent as it was before overload was told apart
	// from an outage (51d2747): every failure is retried as if the CA
	// were down, and pushback is ignored. For comparison only.
	Before bool
}

// NewOurs returns our policy with the agent's defaults.
func NewOurs() *Ours {
	return &Ours{
		GraceRatio:  cache.DefaultGraceRatio,
		GraceJitter: cache.DefaultGraceJitter,
		Retry:       cache.RetryPolicy{Initial: cache.DefaultRetryInitial, Max: cache.DefaultRetryMax},
	}
}

// NewOursBefore returns our policy as it was before overload was told
// apart from an outage.
func NewOursBefore() *Ours {
	o := NewOurs()
	o.Before = true
	return o
}

// Name implements Policy.
func (o *Ours) Name() string {
	if o.Before {
		return "sdsagent-before"
	}
	return "sdsagent"
}

// caError is what caclient returns for a CSR the CA took and refused for
// load, as the simulation's CA answered it: read with the agent's own
// cache.ClassifyFailure.
type caError struct {
	pushback time.Duration
}

func (e *caError) Error() string             { return "create certificate: CA overloaded" }
func (e *caError) Overloaded() bool          { return true }
func (e *caError) RetryAfter() time.Duration { return e.pushback }

// failure is what the agent learns from its failed CSR.
func (o *Ours) failure(a *Agent) cache.Failure {
	if o.Before || a.Fail == failDown {
		// Not an error that says overloaded: what ClassifyFailure
		// returns for it, without the cost of asking 10⁸ times.
		return cache.Failure{}
	}
	pb := time.Duration(0)
	if a.Fail == failPushback {
		pb = time.Duration(a.Pushback) * time.Millisecond
	}
	return cache.ClassifyFailure(&caError{pushback: pb})
}

// reconnectMax is the longest gap between two reconnection attempts of
// the agent's CA connection while the CA is down (caclient's
// reconnectBackoff: 1s ×1.6 capped at 1.65s, jitter ±20%).
const reconnectMax = 1650 * time.Millisecond

// Issued implements Policy: the lifetime counts from when the CSR was
// sent if that is later than NotBefore, as in the Manager.
func (o *Ours) Issued(_ *Sim, a *Agent, _ int64) int64 {
	start := max(a.Sent, a.NotBefore)
	a.RenewAt = virt(cache.RenewTime(wall(start), wall(a.NotAfter), o.GraceRatio, o.GraceJitter, a.rng.Float64()))
	a.Failures, a.Probing = 0, false
	return a.RenewAt
}

// Started implements Policy: the first CSR goes out at once.
func (*Ours) Started(_ *Sim, _ *Agent, now int64) int64 { return now }

// Wake implements Policy. A probing agent whose connection is still down
// skips the CSR (the Manager's stillUnreachable) until RetryMax after the
// last one; once its reconnect succeeded it sends at once.
func (o *Ours) Wake(s *Sim, a *Agent, now int64) (bool, int64) {
	if a.Probing {
		if now >= a.ProbeAt {
			s.Probe(a.ProbeAt)
			a.Probing = false
			return true, 0
		}
		if retry := a.Sent + o.Retry.Max.Milliseconds(); now < retry {
			return false, min(retry, a.ProbeAt)
		}
	}
	return true, 0
}

// Failed implements Policy. The Manager probes after a failure while the
// certificate is in its last tenth (or expired) and the CA unreachable,
// also from the moment the last tenth begins if that comes before the
// next attempt; the reconnect loop then succeeds at a random point of its
// last backoff interval after the CA is back.
func (o *Ours) Failed(s *Sim, a *Agent, now int64) int64 {
	a.Failures++
	next := now + o.wait(a, now, o.failure(a))
	a.Probing = false
	if !a.HasCert || s.CA.Up(now) {
		return next
	}
	up := s.CA.upAgain(now)
	lastTenth := a.NotAfter - (a.NotAfter-a.NotBefore)/10 // the Manager's lastTenthAt
	if cache.InLastTenth(wall(now), a.wallNB, a.wallNA) || (lastTenth < next && lastTenth < up) {
		interval := float64(reconnectMax.Milliseconds()) * (0.8 + 0.4*a.rng.Float64()) / 1.2
		a.Probing = true
		a.ProbeAt = up + int64(a.rng.Float64()*interval)
		return min(next, a.ProbeAt)
	}
	return next
}

// wait is cache.RetryWaitFor for the agent's current certificate.
func (o *Ours) wait(a *Agent, now int64, f cache.Failure) int64 {
	// a.wall* are zero without a certificate, as RetryWaitFor wants.
	return msOf(cache.RetryWaitFor(wall(now), a.wallNB, a.wallNA, a.wallRenew, int(a.Failures), f, o.Retry, a.rng.Float64()))
}

// Istio models istio-agent (pilot-agent) with its defaults, from its
// source (istio/istio at 86c9f01, 2026-08-22):
//   - security/pkg/nodeagent/cache/secretcache.go rotateTime: renewal
//     when (0.5 ± u×0.01) of the lifetime is left, counted from the
//     time the certificate was received (SECRET_GRACE_PERIOD_RATIO 0.5,
//     SECRET_GRACE_PERIOD_RATIO_JITTER 0.01, sign drawn at random);
//   - pkg/security/retry.go CARetryOptions: every CSR call is retried by
//     go-grpc-middleware's interceptor, WithMax(5) calls, waits of
//     100ms×2^(n−1) ±10% between them, on Unavailable, DeadlineExceeded,
//     ResourceExhausted and others;
//   - a rotation that still fails makes the SDS push fail
//     (security/pkg/nodeagent/sds/sdsservice.go, "we rely on the client
//     to retry"): Envoy re-requests with its xDS stream backoff, full
//     jitter in [0, 500ms×2^(n−1)) capped at 30s
//     (envoy source/common/common/backoff_strategy.cc);
//   - at start without a certificate the warm-up loop retries with
//     istio's pkg/backoff defaults (cenkalti: 500ms ×1.5, ±50%, max 60s).
type Istio struct{}

// Name implements Policy.
func (Istio) Name() string { return "istio" }

const istioCalls = 5

// Issued implements Policy.
func (Istio) Issued(_ *Sim, a *Agent, now int64) int64 {
	r := a.rng
	j := r.Float64() * 0.01
	if r.IntN(2) == 0 {
		j = -j
	}
	grace := min(max(0.5+j, 0), 1)
	life := float64(a.NotAfter - now)
	a.RenewAt = a.NotAfter - int64(grace*life)
	a.Failures, a.Burst = 0, 0
	return a.RenewAt
}

// Started implements Policy.
func (Istio) Started(_ *Sim, _ *Agent, now int64) int64 { return now }

// Wake implements Policy.
func (Istio) Wake(*Sim, *Agent, int64) (bool, int64) { return true, 0 }

// Failed implements Policy.
func (Istio) Failed(_ *Sim, a *Agent, now int64) int64 {
	r := a.rng
	a.Burst++
	if a.Burst < istioCalls {
		base := float64(100*time.Millisecond/time.Millisecond) * math.Exp2(float64(a.Burst-1))
		return now + int64(base*(1+0.1*(2*r.Float64()-1)))
	}
	a.Burst = 0
	a.Failures++
	if a.HasCert {
		ceil := min(500*math.Exp2(float64(a.Failures-1)), 30000)
		return now + int64(r.Float64()*ceil)
	}
	iv := min(500*math.Pow(1.5, float64(a.Failures-1)), 60000)
	return now + int64(iv*(1+0.5*(2*r.Float64()-1)))
}

// Spire models spire-agent from its source (spiffe/spire at ef8527e,
// 2026-08-22):
//   - pkg/agent/manager/manager.go runSynchronizer: the agent syncs with
//     the server every 5s; a failed sync backs off with
//     pkg/common/backoff (cenkalti, ±10%, ×1.5, capped at 4 min =
//     48×5s), reset by the next success;
//   - pkg/agent/manager/sync.go: each sync sends a CSR for every SVID
//     that ShouldRotateX509;
//   - pkg/common/rotationutil/rotationutil.go shouldRotateByHalf: rotate
//     when the time left is at most a half-life drawn afresh at every
//     check in [0.45, 0.55)×lifetime (half-life ±10%).
//
// One SVID per agent; the sync's entry fetch is not counted as CA load.
type Spire struct{}

// Name implements Policy.
func (Spire) Name() string { return "spire" }

const spireSync = 5000

func spireTick(a *Agent) int64 { return int64(spireSync * (0.9 + 0.2*a.rng.Float64())) }

// Issued implements Policy: it walks the 5s sync ticks from the first one
// at which rotation is possible to the first that rotates.
func (Spire) Issued(_ *Sim, a *Agent, now int64) int64 {
	r := a.rng
	life := float64(a.NotAfter - a.NotBefore)
	t := max(now, a.NotBefore+int64(0.45*life)) + int64(r.Float64()*spireSync)
	for {
		left := float64(a.NotAfter - t)
		if left <= (0.45+0.1*r.Float64())*life {
			break
		}
		t += spireTick(a)
	}
	a.RenewAt = t
	a.Failures = 0
	return t
}

// Started implements Policy: the first sync runs within 5s.
func (Spire) Started(_ *Sim, a *Agent, now int64) int64 { return now + min(spireTick(a), spireSync) }

// Wake implements Policy.
func (Spire) Wake(*Sim, *Agent, int64) (bool, int64) { return true, 0 }

// Failed implements Policy.
func (Spire) Failed(_ *Sim, a *Agent, now int64) int64 {
	a.Failures++
	iv := min(spireSync*math.Pow(1.5, float64(a.Failures)), 240000)
	return now + int64(iv*(0.9+0.2*a.rng.Float64()))
}
