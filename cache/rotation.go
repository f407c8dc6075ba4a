// This file says when to renew (RenewTime, ShouldRenew,
// TrustRenewTime), pure functions.

package cache

import "time"

// RenewTime returns when a certificate valid from notBefore to notAfter is
// renewed. It follows Istio's SECRET_GRACE_PERIOD_RATIO: the grace period
// before expiry is (ratio + jitter×u) of the lifetime, u in [0,1) being a
// random draw, so the renewal lands at NotBefore + (1 − ratio − jitter×u) ×
// lifetime. At the default ratio 0.5 that is halfway through the lifetime;
// the jitter only moves renewal earlier, spreading a fleet's CSRs. A grace
// period of the whole lifetime or more renews at notBefore, i.e. at once.
func RenewTime(notBefore, notAfter time.Time, ratio, jitter, u float64) time.Time {
	lifetime := notAfter.Sub(notBefore)
	if lifetime <= 0 {
		return notBefore
	}
	grace := ratio + jitter*u
	if grace >= 1 {
		return notBefore
	}
	if grace <= 0 {
		return notAfter
	}
	return notAfter.Add(-time.Duration(grace * float64(lifetime)))
}

// ShouldRenew reports whether renewAt has been reached at now, comparing
// wall-clock readings: Go's monotonic clock stops while a host sleeps, so
// a suspended host must not trust a timer alone.
func ShouldRenew(now, renewAt time.Time) bool {
	return !now.Round(0).Before(renewAt.Round(0))
}

// TrustRenewTime returns when to renew after the file of the CA's roots
// changed at now: at once, unless a renewal such a change caused happened
// less than minInterval ago (last; zero if none), then minInterval after
// it. A root rotation shows up in that file; renewing at once moves the
// workload to the new root without waiting for its next renewal, and
// minInterval keeps a file that keeps changing from driving a tight loop.
func TrustRenewTime(now, last time.Time, minInterval time.Duration) time.Time {
	if last.IsZero() {
		return now
	}
	if at := last.Add(minInterval); at.After(now) {
		return at
	}
	return now
}
