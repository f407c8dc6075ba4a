// This file warns before file-backed certificates expire: the agent does
// not renew them.

package cache

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Expiry levels of a file-backed certificate.
const (
	expiryFine = iota
	expiryNear // less than the grace ratio of its lifetime left
	expiryPast // expired
)

// checkExpiry logs, once per secret and level, file-backed certificates
// that near or pass their expiry: the agent does not renew them.
func (r *fileRegistry) checkExpiry() {
	now := r.clock.Now()
	snap := r.store.Snapshot()
	type warning struct {
		name  string
		sec   *Secret
		level int
	}
	var warnings []warning
	r.mu.Lock()
	for name, e := range r.entries {
		sec := r.servedLocked(e, snap)
		if sec == nil || e.spec.system || e.trust != nil {
			continue
		}
		if e.warned != sec {
			e.warned, e.warnLevel = sec, expiryFine
		}
		if level := expiryLevel(sec, now, r.graceRatio); level > e.warnLevel {
			e.warnLevel = level
			warnings = append(warnings, warning{name, sec, level})
		}
	}
	r.mu.Unlock()

	slices.SortFunc(warnings, func(a, b warning) int { return strings.Compare(a.name, b.name) })
	for _, w := range warnings {
		fields := []zap.Field{zap.String("resource", w.name), zap.String("file", w.sec.Source)}
		fields = append(fields, certFields(w.sec)...)
		if w.level == expiryPast {
			fields = append(fields, zap.Duration("expired_for", now.Round(0).Sub(w.sec.NotAfter())),
				zap.String("hint", "replace the files with a valid certificate; the agent does not renew file-backed certificates"))
			r.log.Error("file certificate expired; still serving it", fields...)
			continue
		}
		fields = append(fields, zap.Duration("remaining", w.sec.NotAfter().Sub(now.Round(0))),
			zap.String("hint", "replace the files before the certificate expires; the agent does not renew file-backed certificates"))
		r.log.Warn("file certificate nears expiry", fields...)
	}
}

// nextExpiryCheck returns when checkExpiry has something new to say.
func (r *fileRegistry) nextExpiryCheck() (time.Time, bool) {
	snap := r.store.Snapshot()
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for _, e := range r.entries {
		sec := r.servedLocked(e, snap)
		if sec == nil || e.spec.system || e.trust != nil || e.warned != sec {
			continue
		}
		var at time.Time
		switch e.warnLevel {
		case expiryFine:
			at = warnTime(sec, r.graceRatio)
		case expiryNear:
			at = sec.NotAfter().Add(time.Second)
		default:
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next, !next.IsZero()
}

// expiryLevel says how close sec is to its expiry at now.
func expiryLevel(sec *Secret, now time.Time, ratio float64) int {
	now = now.Round(0)
	switch {
	case now.After(sec.NotAfter()):
		return expiryPast
	case !now.Before(warnTime(sec, ratio)):
		return expiryNear
	default:
		return expiryFine
	}
}

// warnTime is when less than ratio of sec's lifetime remains: when the
// agent would renew it, were it its own (see RenewTime).
func warnTime(sec *Secret, ratio float64) time.Time {
	c := expiringCert(sec)
	if c == nil {
		return time.Time{}
	}
	return RenewTime(c.NotBefore, c.NotAfter, ratio, 0, 0)
}

func certFields(sec *Secret) []zap.Field {
	c := expiringCert(sec)
	if c == nil {
		return nil
	}
	return []zap.Field{
		zap.String("serial", fmt.Sprintf("%x", c.SerialNumber)),
		zap.Time("not_before", c.NotBefore),
		zap.Time("not_after", c.NotAfter),
		zap.Int("certificates", len(sec.Certs)),
	}
}

// expiringCert returns the certificate whose expiry is sec's: the leaf
// of a TLSCertificate, the earliest anchor of a ValidationContext.
func expiringCert(sec *Secret) *x509.Certificate {
	if len(sec.Certs) == 0 {
		return nil
	}
	c := sec.Certs[0]
	if sec.Kind == TLSCertificate {
		return c
	}
	for _, o := range sec.Certs[1:] {
		if o.NotAfter.Before(c.NotAfter) {
			c = o
		}
	}
	return c
}
