// This file is the retry policy for a CA that answered but refused for
// load: how a failed attempt is classified (ClassifyFailure) and how long
// to wait after it (RetryWaitFor), both pure functions.

package cache

import (
	"errors"
	"time"
)

// Bounds of the wait after an attempt the CA refused for load (see
// OverloadWait and RetryWaitFor).
const (
	// RetryOverloadMax caps the backoff ceiling for an overloaded CA, and
	// the pushback honoured: an agent with hours left gives way to those
	// about to expire, yet a CA that asks for days cannot stop renewal.
	RetryOverloadMax = 10 * time.Minute
	// RetryOverloadExpiredMax is the longest backoff ceiling for an
	// overloaded CA once the certificate has expired (or before the
	// first): long enough for a crowd of expired agents to spread over
	// the CA's capacity, short enough to be served soon after it frees.
	RetryOverloadExpiredMax = 30 * time.Second
	// pushbackJitter is the share of a pushback added on top at random,
	// so that a crowd told the same value does not come back at once.
	pushbackJitter = 0.1
)

// Failure is what a failed CSR attempt says about the CA, as
// ClassifyFailure reads it from the Signer's error.
type Failure struct {
	// Overloaded is true when the CA took the call and refused it for
	// load, did not answer it in time while connected, or asked for a
	// pushback. False for everything else: a CA that cannot be reached
	// (issue 8's rules apply), a bad answer, a refusal of the request.
	Overloaded bool
	// Pushback is the least wait the CA asked for before the next
	// attempt (gRPC's grpc-retry-pushback-ms), capped at
	// RetryOverloadMax; zero when it asked for none.
	Pushback time.Duration
}

// OverloadError is implemented by Signer errors that can say the CA was
// overloaded: it took the call and refused it for load (gRPC
// ResourceExhausted, HTTP 429 or 503) or did not answer in time while the
// connection was up. An error anywhere in the chain that says true makes
// the failure Overloaded.
type OverloadError interface {
	error
	Overloaded() bool
}

// PushbackError is implemented by Signer errors that carry the CA's
// request to wait before the next attempt (gRPC's grpc-retry-pushback-ms
// trailer, an HTTP Retry-After). RetryAfter returns zero when the CA
// asked for none; a Signer never returns a negative or unparsable value.
type PushbackError interface {
	error
	RetryAfter() time.Duration
}

// ClassifyFailure reads what err, a failed attempt's error, says about the
// CA (see Failure). A pushback makes the failure Overloaded.
func ClassifyFailure(err error) Failure {
	var f Failure
	var oe OverloadError
	if errors.As(err, &oe) && oe.Overloaded() {
		f.Overloaded = true
	}
	var pe PushbackError
	if errors.As(err, &pe) {
		if d := pe.RetryAfter(); d > 0 {
			f.Overloaded = true
			f.Pushback = min(d, RetryOverloadMax)
		}
	}
	return f
}

// OverloadWait returns how long to wait after the attempt-th consecutive
// failed attempt (attempt ≥ 1), the last refused for load, at now, for a certificate
// valid from notBefore to notAfter (both zero when there is none yet). u
// is a uniform random draw in [0,1). It is full jitter, a uniform wait in
// [0, ceiling], the ceiling being p.Initial×2^(attempt−1) capped at
// RetryOverloadMax, and never more than:
//
//   - a tenth of the time left while the certificate is valid (floored at
//     RetryFloor): ten attempts still fit before expiry, and agents with
//     hours left wait long, making way for those about to expire;
//   - RetryOverloadExpiredMax once it has expired, or before the first.
//
// No wait is shorter than RetryMinWait.
func OverloadWait(now, notBefore, notAfter time.Time, attempt int, p RetryPolicy, u float64) time.Duration {
	now, notAfter = now.Round(0), notAfter.Round(0)
	ceiling := backoffCeiling(attempt, RetryPolicy{Initial: p.Initial, Max: RetryOverloadMax})
	if notAfter.IsZero() || !now.Before(notAfter) {
		ceiling = min(ceiling, RetryOverloadExpiredMax)
	} else {
		ceiling = min(ceiling, max(notAfter.Sub(now)/retryShareOfLeft, RetryFloor))
	}
	return max(time.Duration(float64(ceiling)*u), RetryMinWait)
}

// RetryWaitFor returns how long to wait after the attempt-th consecutive
// failed attempt, the last described by f. attempt counts failures of
// every kind: after an outage the overload backoff goes on from the
// outage's, not from Initial, which would make a fleet coming back from
// an outage retry an overloaded CA faster than it retried a dead one. u
// is a uniform random draw in [0,1). It is a pure function, for the same
// reason as RetryWait.
//
//   - Not overloaded: RetryWait, unchanged (a CA that is down is seen
//     within RetryExpiredMax once the certificate has expired).
//   - Overloaded: OverloadWait.
//   - With a pushback: at least the pushback, plus up to a tenth of it at
//     random (u again), whatever the certificate's state; the longer of
//     that and the wait above.
func RetryWaitFor(now, notBefore, notAfter, renewAt time.Time, attempt int, f Failure, p RetryPolicy, u float64) time.Duration {
	var wait time.Duration
	if f.Overloaded {
		wait = OverloadWait(now, notBefore, notAfter, attempt, p, u)
	} else {
		wait = RetryWait(now, notBefore, notAfter, renewAt, attempt, p, u)
	}
	if pb := min(f.Pushback, RetryOverloadMax); pb > 0 {
		wait = max(wait, pb+time.Duration(float64(pb)*pushbackJitter*u))
	}
	return wait
}
