// This file handles the CRL file: which CRLs are served in ROOTCA, in
// which form, their staleness, and the workload's own revocation.

package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/sdsagent/sdsagent/internal/clock"
	"github.com/sdsagent/sdsagent/internal/pki"
)

// FileCRLUntrusted is the file errors reason of a CRL file holding a CRL
// that no trusted CA signed.
const FileCRLUntrusted = "crl_untrusted"

const (
	// roleCRL names the CRL file in trust file logs.
	roleCRL = "crl"
	// crlEntryName is the CRL file's entry in the file registry.
	crlEntryName = "crl-file"
)

// crlTrust is the CRL part of trust; its fields are guarded by trust.mu.
//
// The CRLs read from Config.CRLFile wait in pending until each is found
// signed by a CA the agent trusts: a root of ROOTCA or an intermediate
// of the workload's chain. Then they replace served; a refused file
// leaves served alone.
type crlTrust struct {
	file    string
	pending []*x509.RevocationList
	// refused is why pending was last refused, so it is logged once.
	refused string
	served  []servedCRL
	// chain is the workload chain (leaf first) the last publish saw.
	chain []*x509.Certificate
	// spiffeWarned is set once the SPIFFE form was logged as left
	// without the served CRLs.
	spiffeWarned bool
	// staleWarned holds the served CRLs logged as past NextUpdate.
	staleWarned map[*x509.RevocationList]bool
	// changed wakes Manager.runCRL when served changes.
	changed chan struct{}
	// leafRevoked is told when the workload's own leaf is in a served
	// CRL.
	leafRevoked func(leaf *x509.Certificate, entry x509.RevocationListEntry)
}

// servedCRL is an accepted CRL and the CA that signed it.
type servedCRL struct {
	crl    *x509.RevocationList
	issuer *x509.Certificate
}

// loadCRLFile reads a PEM file of one or more CRLs. Signatures are
// checked later, against the trust roots (trust.setCRLs).
func loadCRLFile(name, path string) (*Secret, [sha256.Size]byte, error) {
	data, err := readPEMFile(path)
	if err != nil {
		return nil, [sha256.Size]byte{}, err
	}
	digest := sha256.Sum256(data)
	crls, err := pki.ParseCRLs(data)
	if err != nil {
		return nil, digest, &FileError{Path: path, Reason: FileMalformed, Err: err}
	}
	return &Secret{Name: name, Kind: ValidationContext, CRLPEM: pki.EncodeCRLs(crls), Source: path}, digest, nil
}

// addCRLFile registers Config.CRLFile with the file registry.
func (m *Manager) addCRLFile() {
	m.trust.crl.changed = make(chan struct{}, 1)
	m.trust.crl.staleWarned = map[*x509.RevocationList]bool{}
	m.trust.crl.leafRevoked = m.ownLeafRevoked
	if m.cfg.CRLFile == "" {
		return
	}
	m.addTrustFile(crlEntryName, trustFile{role: roleCRL},
		fileSpec{kind: ValidationContext, ca: m.cfg.CRLFile, crl: true},
		func(l fileLoad) {
			m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.setCRLs(l.sec.CRLPEM, l.sec.Source, chain) })
		})
}

// ownLeafRevoked wakes the renewal loop: the workload's certificate is
// revoked, so peers honouring the CRL refuse it.
func (m *Manager) ownLeafRevoked(leaf *x509.Certificate, entry x509.RevocationListEntry) {
	fields := []zap.Field{
		zap.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)),
		zap.Time("revoked_at", entry.RevocationTime),
		zap.Int("reason_code", entry.ReasonCode),
		zap.String("crl_file", m.cfg.CRLFile),
	}
	if m.cfg.MountedCertDir != "" {
		m.log.Error("workload certificate is revoked; peers that honour the crl refuse it",
			append(fields, zap.String("hint", "replace the mounted certificate files: the agent does not renew them"))...)
		return
	}
	m.log.Warn("workload certificate is revoked; renewing it at once", fields...)
	select {
	case m.leafRevoked <- struct{}{}:
	default:
	}
}

// setCRLs takes the CRLs of the CRL file, to be served once their
// signers are known to be trusted.
func (t *trust) setCRLs(crlPEM []byte, path string, chain []*x509.Certificate) rootsUpdate {
	crls, err := pki.ParseCRLs(crlPEM)
	if err != nil { // loadCRLFile parsed them already
		return rootsUpdate{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.crl.file, t.crl.pending, t.crl.refused = path, crls, ""
	return t.composeLocked(causeCRL, chain)
}

// causeCRL is the cause of a publish of new CRLs.
const causeCRL = "crl_file"

// acceptCRLsLocked serves the pending CRLs if every one is signed by a
// root of own or an intermediate of chain; otherwise it logs and counts
// the refusal once and keeps the served ones. t.mu is held.
func (t *trust) acceptCRLsLocked(own, chain []*x509.Certificate) {
	t.crl.chain = chain
	if t.crl.pending == nil {
		return
	}
	var cas []*x509.Certificate
	if len(chain) > 1 {
		cas = append(cas, chain[1:]...)
	}
	cas = append(cas, own...)
	served, err := matchCRLIssuers(t.crl.pending, cas)
	if err != nil {
		if err.Error() == t.crl.refused {
			return
		}
		t.crl.refused = err.Error()
		t.metrics.FileErrors.WithLabelValues(FileCRLUntrusted).Inc()
		fields := []zap.Field{zap.String("role", roleCRL), zap.String("file", t.crl.file),
			zap.String("reason", FileCRLUntrusted), zap.String("error", err.Error()),
			zap.String("hint", "the file must hold CRLs signed by this mesh's CA (sdsagent ca publishes DIR/crl.pem) or by a root in ROOTCA; if the issuing root should be trusted, add it with --trust-anchors")}
		if len(t.crl.served) > 0 {
			t.log.Warn("crl file refused; keeping the previous crls", fields...)
		} else {
			t.log.Error("crl file refused; no crl served", fields...)
		}
		return
	}
	t.crl.served, t.crl.pending, t.crl.refused, t.crl.spiffeWarned = served, nil, "", false
	for _, s := range served {
		t.log.Info("crl accepted",
			zap.String("file", t.crl.file),
			zap.String("issuer", s.issuer.Subject.String()),
			zap.String("crl_number", fmt.Sprint(s.crl.Number)),
			zap.Int("revoked", len(s.crl.RevokedCertificateEntries)),
			zap.Time("this_update", s.crl.ThisUpdate),
			zap.Time("next_update", s.crl.NextUpdate))
	}
	if len(chain) > 1 && !slices.ContainsFunc(served, func(s servedCRL) bool { return s.issuer.Equal(chain[1]) }) {
		t.log.Warn("no crl of the ca that signs the workload's certificate; peers that honour crls refuse certificates of a ca without one",
			zap.String("file", t.crl.file), zap.String("ca", chain[1].Subject.String()),
			zap.String("hint", "add that CA's CRL to the file (a PEM file may hold several CRLs)"))
	}
	select {
	case t.crl.changed <- struct{}{}:
	default:
	}
	if len(chain) > 0 {
		if entry, ok := revokedBy(chain[0], served); ok && t.crl.leafRevoked != nil {
			t.crl.leafRevoked(chain[0], entry)
		}
	}
}

// matchCRLIssuers finds, for each CRL, the CA among cas that signed it.
// The error names the first CRL none of them signed.
func matchCRLIssuers(crls []*x509.RevocationList, cas []*x509.Certificate) ([]servedCRL, error) {
	out := make([]servedCRL, 0, len(crls))
	for i, crl := range crls {
		idx := slices.IndexFunc(cas, func(ca *x509.Certificate) bool {
			return bytes.Equal(crl.RawIssuer, ca.RawSubject) && crl.CheckSignatureFrom(ca) == nil
		})
		if idx < 0 {
			return nil, fmt.Errorf("CRL %d of %d (issuer %q, number %v) is not signed by a trusted root or an intermediate of the workload's chain",
				i+1, len(crls), crl.Issuer.String(), crl.Number)
		}
		out = append(out, servedCRL{crl: crl, issuer: cas[idx]})
	}
	return out, nil
}

// revokedBy returns the entry of leaf in the CRL of its issuer, if any.
func revokedBy(leaf *x509.Certificate, served []servedCRL) (x509.RevocationListEntry, bool) {
	for _, s := range served {
		if !bytes.Equal(leaf.RawIssuer, s.issuer.RawSubject) || leaf.CheckSignatureFrom(s.issuer) != nil {
			continue
		}
		for _, e := range s.crl.RevokedCertificateEntries {
			if e.SerialNumber != nil && e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				return e, true
			}
		}
	}
	return x509.RevocationListEntry{}, false
}

// addCRLsLocked puts the served CRLs into sec, the trust roots own in
// either form. Envoy's default validator reads the crl field; when the
// CRLs do not cover every CA up to the roots it must check leaves only
// (only_verify_leaf_cert_crl), or it refuses every chain with a CA
// without a CRL. Envoy's SPIFFE validator ignores the crl field and
// takes CRLs from a trust bundle, then always checks every CA of a
// chain: they go into the own trust domain's bundle only when they cover
// all its CAs. t.mu is held.
func (t *trust) addCRLsLocked(sec *Secret, own []*x509.Certificate) {
	if len(t.crl.served) == 0 {
		return
	}
	crls := make([]*x509.RevocationList, 0, len(t.crl.served))
	for _, s := range t.crl.served {
		crls = append(crls, s.crl)
	}
	cas := slices.Clone(own)
	if len(t.crl.chain) > 1 {
		cas = append(cas, t.crl.chain[1:]...)
	}
	covers := !slices.ContainsFunc(cas, func(ca *x509.Certificate) bool {
		return !slices.ContainsFunc(t.crl.served, func(s servedCRL) bool { return s.issuer.Equal(ca) })
	})
	if len(sec.Bundles) == 0 {
		sec.CRLPEM = pki.EncodeCRLs(crls)
		sec.OnlyVerifyLeafCRL = !covers
		return
	}
	if !covers {
		if !t.crl.spiffeWarned {
			t.crl.spiffeWarned = true
			t.log.Warn("crls left out of the spiffe validator form; it would refuse every peer",
				zap.String("file", t.crl.file),
				zap.String("hint", "Envoy's SPIFFE validator checks every CA of a chain against a CRL: put a CRL of each trusted root and intermediate in the file, or serve ROOTCA without --spiffe-validator, where leaves alone are checked"))
		}
		return
	}
	bundles := slices.Clone(sec.Bundles)
	bundles[0].CRLPEM = pki.EncodeCRLs(crls)
	sec.Bundles = bundles
}

// checkStaleCRLs logs each served CRL that passed its NextUpdate (once),
// sets the stale gauge, and returns when the next one will.
func (t *trust) checkStaleCRLs() (time.Time, bool) {
	t.mu.Lock()
	now := t.clock.Now().Round(0)
	var (
		stale int
		next  time.Time
		warn  []servedCRL
	)
	for _, s := range t.crl.served {
		if now.After(s.crl.NextUpdate) {
			stale++
			if !t.crl.staleWarned[s.crl] {
				t.crl.staleWarned[s.crl] = true
				warn = append(warn, s)
			}
			continue
		}
		if next.IsZero() || s.crl.NextUpdate.Before(next) {
			next = s.crl.NextUpdate
		}
	}
	file := t.crl.file
	t.metrics.CRLStale.Set(float64(stale))
	t.mu.Unlock()

	for _, s := range warn {
		t.log.Warn("crl past its next update; still serving it",
			zap.String("file", file),
			zap.String("issuer", s.issuer.Subject.String()),
			zap.String("crl_number", fmt.Sprint(s.crl.Number)),
			zap.Time("next_update", s.crl.NextUpdate),
			zap.Duration("stale_for", now.Sub(s.crl.NextUpdate)),
			zap.String("hint", "publish a fresh CRL into the file (a running sdsagent ca re-signs at half its validity: is it running, and is the file copied?); Envoy refuses peers whose issuer's CRL has expired"))
	}
	if next.IsZero() {
		return time.Time{}, false
	}
	return next.Add(time.Second), true
}

// runCRL keeps the stale CRL gauge and warnings up to date until ctx
// ends.
func (m *Manager) runCRL(ctx context.Context) {
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var timerC <-chan time.Time
		if at, ok := m.trust.checkStaleCRLs(); ok {
			wait := at.Round(0).Sub(m.cfg.Clock.Now().Round(0))
			timer = m.cfg.Clock.NewTimer(min(wait, m.cfg.WakeInterval))
			timerC = timer.C()
		}
		select {
		case <-ctx.Done():
			return
		case <-m.trust.crl.changed:
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
			timer = nil
		}
	}
}
