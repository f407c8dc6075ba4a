// This file holds the pure functions on lists of roots that trust uses:
// composing ROOTCA, retiring and expiring roots, diffing and naming them.

package cache

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// composeRoots returns the roots of ROOTCA: primary, then retiring, then
// anchors, each certificate once, in that order.
func composeRoots(primary []*x509.Certificate, retiring []retiringRoot, anchors []*x509.Certificate) []*x509.Certificate {
	all := slices.Clone(primary)
	for _, r := range retiring {
		all = append(all, r.cert)
	}
	return dedupCerts(append(all, anchors...))
}

// retireRoots returns the retiring roots after the CA's roots changed
// from old to cur at now: each root of old not in cur retires until
// now+overlap and comes first; a retiring root in cur again is current,
// no longer retiring; the others keep their place and deadline.
func retireRoots(old, cur []*x509.Certificate, retiring []retiringRoot, now time.Time, overlap time.Duration) []retiringRoot {
	var out []retiringRoot
	isRetiring := func(c *x509.Certificate) bool {
		return slices.ContainsFunc(retiring, func(r retiringRoot) bool { return r.cert.Equal(c) })
	}
	for _, c := range old {
		if !containsCert(cur, c) && !isRetiring(c) && !slices.ContainsFunc(out, func(r retiringRoot) bool { return r.cert.Equal(c) }) {
			out = append(out, retiringRoot{cert: c, until: now.Add(overlap)})
		}
	}
	for _, r := range retiring {
		if !containsCert(cur, r.cert) {
			out = append(out, r)
		}
	}
	return out
}

// expireRoots splits retiring into the roots still trusted at now and
// those whose overlap has ended, comparing wall-clock readings as
// ShouldRenew does.
func expireRoots(retiring []retiringRoot, now time.Time) (kept, dropped []retiringRoot) {
	for _, r := range retiring {
		if ShouldRenew(now, r.until) {
			dropped = append(dropped, r)
		} else {
			kept = append(kept, r)
		}
	}
	return kept, dropped
}

// diffRoots says which roots of trust domain td were added and removed
// from before to after, and false if none.
func diffRoots(td string, before, after []*x509.Certificate) (rootsChange, bool) {
	c := rootsChange{trustDomain: td, count: len(after)}
	for _, a := range after {
		if !containsCert(before, a) {
			c.added = append(c.added, a)
		}
	}
	for _, b := range before {
		if !containsCert(after, b) {
			c.removed = append(c.removed, b)
		}
	}
	return c, len(c.added)+len(c.removed) > 0
}

// dedupCerts returns certs without repeats, in their first order.
func dedupCerts(certs []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range certs {
		if !containsCert(out, c) {
			out = append(out, c)
		}
	}
	return out
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(certs, c.Equal)
}

// fingerprint is the SHA-256 of the certificate's DER in hex, as
// `openssl x509 -noout -fingerprint -sha256` prints it without colons.
func fingerprint(c *x509.Certificate) string {
	return fmt.Sprintf("%x", sha256.Sum256(c.Raw))
}

// describeCerts names certificates in logs: subject and fingerprint.
func describeCerts(certs []*x509.Certificate) []string {
	out := make([]string, 0, len(certs))
	for _, c := range certs {
		out = append(out, c.Subject.String()+" sha256:"+fingerprint(c))
	}
	return out
}
