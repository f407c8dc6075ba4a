package cache

import "time"

// Bounds of the wait between failed CSR attempts once the renewal time has
// passed (see RetryWait).
const (
	// RetryFloor is the least ceiling of a wait past the renewal time, so
	// that a certificate with seconds left does not drive a tight loop.
	RetryFloor = time.Second
	// RetryExpiredMax is the longest wait once the certificate has
	// expired: nothing valid is served, so a CA that comes back must be
	// used within this.
	RetryExpiredMax = 2 * time.Second
	// RetryMinWait is the least wait of all: full jitter can draw a wait
	// near zero, and no draw may turn into a tight loop.
	RetryMinWait = 100 * time.Millisecond
	// retryShareOfLeft is the share of the time left on the certificate
	// that one wait may use past the renewal time: at least ten attempts
	// fit in what is left.
	retryShareOfLeft = 10
)

// RetryPolicy shapes the exponential backoff between failed attempts.
type RetryPolicy struct {
	// Initial is the first wait's ceiling; it doubles with each failure.
	Initial time.Duration
	// Max caps the backoff ceiling, and the wait past the renewal time.
	Max time.Duration
}

// RetryWait returns how long to wait after the attempt-th consecutive
// failed attempt (attempt ≥ 1) at now, for a certificate valid from
// notBefore to notAfter (both zero when there is none yet) renewed at
// renewAt. u is a uniform random draw in [0,1). It is a pure function, so
// that a fleet simulation can compute what agents do.
//
//   - No certificate, or before renewAt (a renewal asked early, e.g. by a
//     root change): exponential backoff, the ceiling Initial×2^(attempt−1)
//     capped at Max, jittered by ±50% (cenkalti/backoff's default shape).
//   - Past renewAt and still valid: full jitter, a uniform wait in
//     [0, ceiling], the ceiling being the backoff ceiling but never more
//     than a tenth of the time left (floored at RetryFloor, capped at
//     Max).
//   - Expired: full jitter with a ceiling of at most RetryExpiredMax.
//
// No wait is shorter than RetryMinWait.
func RetryWait(now, notBefore, notAfter, renewAt time.Time, attempt int, p RetryPolicy, u float64) time.Duration {
	now, notAfter, renewAt = now.Round(0), notAfter.Round(0), renewAt.Round(0)
	ceiling := backoffCeiling(attempt, p)
	var wait time.Duration
	switch {
	case notAfter.IsZero() || now.Before(renewAt):
		wait = time.Duration(float64(ceiling) * (0.5 + u))
	case !now.Before(notAfter):
		wait = time.Duration(float64(min(ceiling, RetryExpiredMax)) * u)
	default:
		bound := min(max(notAfter.Sub(now)/retryShareOfLeft, RetryFloor), p.Max)
		wait = time.Duration(float64(min(ceiling, bound)) * u)
	}
	return max(wait, RetryMinWait)
}

// backoffCeiling returns Initial×2^(attempt−1), capped at Max.
func backoffCeiling(attempt int, p RetryPolicy) time.Duration {
	c := p.Initial
	for i := 1; i < attempt && c < p.Max; i++ {
		c *= 2
	}
	return min(c, p.Max)
}

// InLastTenth reports whether, at now, a certificate valid from notBefore
// to notAfter has expired or has less than a tenth of its lifetime left:
// then the Manager also watches whether the CA is reachable again (see
// Prober) to send the next CSR the moment it is.
func InLastTenth(now, notBefore, notAfter time.Time) bool {
	if notAfter.IsZero() {
		return false
	}
	lifetime := notAfter.Round(0).Sub(notBefore.Round(0))
	return notAfter.Round(0).Sub(now.Round(0)) <= lifetime/retryShareOfLeft
}
