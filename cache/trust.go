// This file composes the trust roots (ROOTCA, ALL) and returns them for
// the Manager to publish; it publishes nothing itself.

package cache

import (
	"crypto/x509"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/metrics"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// trust composes the trust roots the agent serves as ROOTCA, and as ALL
// while a stream asks for it. It publishes nothing: each change returns a
// rootsUpdate, which the Manager publishes (Manager.updateTrust).
//
// ROOTCA holds, each certificate once, in this order:
//
//  1. the primary roots: those the CA's last verified answer ended in,
//     or those of the mounted root-cert.pem;
//  2. retiring roots (CA mode only): roots the CA's answers ended in
//     before it moved to another root, kept until their overlap ends, the
//     most recently replaced first;
//  3. the trust anchors, in the order of their file.
//
// In the SPIFFE form (Config.SPIFFEValidator for ROOTCA, always for ALL)
// that list is the bundle of the agent's own trust domain, followed by
// one bundle per federated trust domain read from files, by name.
//
// No roots are returned before the primary roots are known, so that
// ROOTCA never appears without what verifies the workload's own peers.
// Its methods are safe for concurrent use. Each takes chain, the workload
// chain (leaf first) served with the roots, for the CRLs (see crl.go).
type trust struct {
	clock       clock.Clock
	log         *zap.Logger
	metrics     *metrics.Metrics
	trustDomain string
	overlap     time.Duration
	// rootCAForm is how ROOTCA carries its roots (Config.SPIFFEValidator).
	rootCAForm rootsForm

	mu       sync.Mutex
	primary  []*x509.Certificate
	source   string
	retiring []retiringRoot
	anchors  []*x509.Certificate
	// bundles are the federated trust domains' roots, by trust domain.
	bundles map[string][]*x509.Certificate
	wantAll bool
	// served and servedBundles are what was last published, to log what
	// changed.
	served        []*x509.Certificate
	servedBundles map[string][]*x509.Certificate
	// crl is the CRL file's state (see crl.go).
	crl crlTrust
}

// retiringRoot is a root the CA no longer signs under, trusted until
// until.
type retiringRoot struct {
	cert  *x509.Certificate
	until time.Time
}

// Causes of a change of the trust roots, the "cause" key of its log line.
const (
	causeCAAnswer    = "ca_answer"
	causeMountedRoot = "mounted_root_file"
	causeAnchors     = "trust_anchors_file"
	causeBundle      = "trust_bundle_file"
	causeRetired     = "root_retired"
)

type trustConfig struct {
	clock       clock.Clock
	logger      *zap.Logger
	metrics     *metrics.Metrics
	trustDomain string
	overlap     time.Duration
	spiffe      bool
}

func newTrust(cfg trustConfig) *trust {
	return &trust{
		clock:         cfg.clock,
		log:           cfg.logger.Named("trust"),
		metrics:       cfg.metrics,
		trustDomain:   cfg.trustDomain,
		overlap:       cfg.overlap,
		rootCAForm:    rootsForm(cfg.spiffe),
		bundles:       map[string][]*x509.Certificate{},
		servedBundles: map[string][]*x509.Certificate{},
	}
}

// rootsUpdate is what a change of the trust roots asks the Manager to
// publish, in one snapshot with the workload certificate when that
// changed too.
type rootsUpdate struct {
	// set is ROOTCA, and ALL while a stream wants it; empty before the
	// primary roots are known.
	set []*Secret
	// remove names ALL when no stream wants it.
	remove []string
	// report logs the change; the Manager calls it once published.
	report func()
}

// caAnswer makes roots, those the CA's last verified answer (chain)
// ended in, the primary roots. Primary roots not among them start
// retiring: the CA moved to a new root, and peers still hold
// certificates under the old one.
func (t *trust) caAnswer(roots, chain []*x509.Certificate) rootsUpdate {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var (
		started   []retiringRoot
		untrusted []*x509.Certificate // new CA roots that were not served
	)
	for _, r := range roots {
		if len(t.served) > 0 && !containsCert(t.served, r) {
			untrusted = append(untrusted, r)
		}
	}
	next := retireRoots(t.primary, roots, t.retiring, now, t.overlap)
	for _, r := range next {
		if !slices.ContainsFunc(t.retiring, func(o retiringRoot) bool { return o.cert.Equal(r.cert) }) {
			started = append(started, r)
		}
	}
	t.retiring = next
	t.primary = slices.Clone(roots)
	t.source = "ca"
	u := t.composeLocked(causeCAAnswer, chain)
	changed := u.report
	u.report = func() {
		for _, r := range untrusted {
			t.log.Warn("ca answer ends in a root not trusted before; peers that do not trust it yet refuse this workload",
				zap.String("subject", r.Subject.String()),
				zap.String("sha256", fingerprint(r)),
				zap.String("hint", "before moving a CA to a new root, add the root to every agent's trust anchors (--trust-anchors) and wait until they serve it"))
		}
		for _, r := range started {
			t.log.Info("trust root retiring; the CA signs under another root now",
				zap.String("subject", r.cert.Subject.String()),
				zap.String("sha256", fingerprint(r.cert)),
				zap.Time("retire_at", r.until),
				zap.Duration("overlap", t.overlap))
		}
		changed()
	}
	return u
}

// mountedRoots makes roots, read from the mounted root file source, the
// primary roots. The file is authoritative: roots no longer in it are
// dropped at once.
func (t *trust) mountedRoots(roots []*x509.Certificate, source string, chain []*x509.Certificate) rootsUpdate {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.primary = slices.Clone(roots)
	t.source = source
	return t.composeLocked(causeMountedRoot, chain)
}

// setAnchors replaces the trust anchors.
func (t *trust) setAnchors(certs, chain []*x509.Certificate) rootsUpdate {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.anchors = certs
	return t.composeLocked(causeAnchors, chain)
}

// setBundle replaces the roots of the federated trust domain td.
func (t *trust) setBundle(td string, certs, chain []*x509.Certificate) rootsUpdate {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bundles[td] = dedupCerts(certs)
	return t.composeLocked(causeBundle, chain)
}

// setWantAll says whether a stream wants ALL; it is returned only then.
// The update is empty when that did not change.
func (t *trust) setWantAll(want bool, chain []*x509.Certificate) rootsUpdate {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.wantAll == want {
		return rootsUpdate{}
	}
	t.wantAll = want
	u := t.composeLocked("", chain)
	u.report = nil // ALL's roots are ROOTCA's and the bundles: nothing changed
	return u
}

// expire drops the retiring roots whose overlap has ended at now. The
// update is empty when none did.
func (t *trust) expire(now time.Time, chain []*x509.Certificate) rootsUpdate {
	t.mu.Lock()
	defer t.mu.Unlock()
	kept, dropped := expireRoots(t.retiring, now)
	if len(dropped) == 0 {
		return rootsUpdate{}
	}
	t.retiring = kept
	anchors := t.anchors
	u := t.composeLocked(causeRetired, chain)
	changed := u.report
	u.report = func() {
		for _, r := range dropped {
			t.log.Info("trust root retired; its overlap ended",
				zap.String("subject", r.cert.Subject.String()),
				zap.String("sha256", fingerprint(r.cert)),
				zap.Time("retire_at", r.until),
				zap.Bool("kept_as_trust_anchor", containsCert(anchors, r.cert)))
		}
		changed()
	}
	return u
}

// nextRetirement returns when the next retiring root is dropped.
func (t *trust) nextRetirement() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var next time.Time
	for _, r := range t.retiring {
		if next.IsZero() || r.until.Before(next) {
			next = r.until
		}
	}
	return next, !next.IsZero()
}

// rootsChange is how the roots of one trust domain changed.
type rootsChange struct {
	trustDomain    string
	added, removed []*x509.Certificate
	// count is how many roots the trust domain has after the change.
	count int
}

// composeLocked returns the trust roots secrets for the current inputs
// (none before the primary roots are known) and a report that logs, with
// cause, the roots that changed since the last update composed. t.mu is
// held.
func (t *trust) composeLocked(cause string, chain []*x509.Certificate) rootsUpdate {
	if len(t.primary) == 0 {
		return rootsUpdate{}
	}
	own := composeRoots(t.primary, t.retiring, t.anchors)
	t.acceptCRLsLocked(own, chain)
	bundles := t.bundlesFor(own)
	u := rootsUpdate{set: []*Secret{t.rootsSecret(RootCertName, own, bundles, t.rootCAForm)}}
	if t.wantAll && len(bundles) > 0 {
		u.set = append(u.set, t.rootsSecret(AllBundlesName, own, bundles, spiffeForm))
	} else {
		u.remove = []string{AllBundlesName}
	}

	var changes []rootsChange
	if c, ok := diffRoots(t.trustDomain, t.served, own); ok {
		changes = append(changes, c)
	}
	t.served = own
	for _, td := range slices.Sorted(maps.Keys(t.bundles)) {
		if c, ok := diffRoots(td, t.servedBundles[td], t.bundles[td]); ok {
			changes = append(changes, c)
		}
		t.servedBundles[td] = t.bundles[td]
	}
	u.report = func() { t.logChanges(cause, changes) }
	return u
}

// bundlesFor returns the SPIFFE bundles: the agent's own trust domain
// with own, then the federated ones with roots, by name.
func (t *trust) bundlesFor(own []*x509.Certificate) []TrustBundle {
	var out []TrustBundle
	if t.trustDomain != "" {
		out = append(out, TrustBundle{TrustDomain: t.trustDomain, RootsPEM: pki.EncodeCertificates(own), Roots: own})
	}
	for _, td := range slices.Sorted(maps.Keys(t.bundles)) {
		if roots := t.bundles[td]; len(roots) > 0 {
			out = append(out, TrustBundle{TrustDomain: td, RootsPEM: pki.EncodeCertificates(roots), Roots: roots})
		}
	}
	return out
}

// rootsForm is how a ValidationContext carries its roots.
type rootsForm bool

const (
	// trustedCAForm serves the own roots as trusted_ca.
	trustedCAForm rootsForm = false
	// spiffeForm serves one bundle per trust domain, for Envoy's SPIFFE
	// certificate validator.
	spiffeForm rootsForm = true
)

// rootsSecret returns the ValidationContext named name: own as trusted
// CAs, or, in spiffeForm, the bundles.
func (t *trust) rootsSecret(name string, own []*x509.Certificate, bundles []TrustBundle, form rootsForm) *Secret {
	sec := &Secret{
		Name:         name,
		Kind:         ValidationContext,
		TrustedCAPEM: pki.EncodeCertificates(own),
		Certs:        own,
		Source:       t.source,
	}
	if form == spiffeForm && len(bundles) > 0 {
		sec.Bundles = bundles
		var all []*x509.Certificate
		for _, b := range bundles {
			all = append(all, b.Roots...)
		}
		sec.Certs = dedupCerts(all)
	}
	t.addCRLsLocked(sec, own)
	return sec
}

// logChanges logs each trust domain whose roots changed.
func (t *trust) logChanges(cause string, changes []rootsChange) {
	for _, c := range changes {
		t.log.Info("trust roots changed",
			zap.String("trust_domain", c.trustDomain),
			zap.String("cause", cause),
			zap.Strings("added_roots", describeCerts(c.added)),
			zap.Strings("removed_roots", describeCerts(c.removed)),
			zap.Int("roots", c.count))
	}
}
