// This file registers the trust files (the CA's root file, the trust
// anchors, the federated trust bundles) with the file registry, feeds
// what they hold to trust, and logs their loads.

package cache

import (
	"crypto/x509"
	"errors"

	"go.uber.org/zap"
)

// Roles of the trust files, the "role" key of their log lines.
const (
	roleAnchors = "trust_anchors"
	roleBundle  = "trust_bundle"
	roleCARoot  = "ca_root_cert"
)

// addTrustFiles registers the trust files of the configuration. Each
// feeds trust (or, for the CA's root file, the renewal loop) instead of
// being served under its own name.
func (m *Manager) addTrustFiles() {
	cfg := m.cfg
	if cfg.MountedCertDir == "" && cfg.CARootCertFile != "" {
		m.files.addEntry(&fileEntry{name: "ca-root-cert", role: roleCARoot,
			spec: fileSpec{kind: ValidationContext, ca: cfg.CARootCertFile},
			sink: m.caRootFileChanged})
	}
	if cfg.TrustAnchorsFile != "" {
		m.files.addEntry(&fileEntry{name: "trust-anchors", role: roleAnchors,
			spec: fileSpec{kind: ValidationContext, ca: cfg.TrustAnchorsFile, allowEmpty: true},
			sink: func(l fileLoad) {
				m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.setAnchors(l.sec.Certs, chain) })
			}})
	}
	for _, b := range cfg.TrustBundleFiles {
		td := b.TrustDomain
		m.files.addEntry(&fileEntry{name: "trust-bundle:" + td, role: roleBundle, trustDomain: td,
			spec: fileSpec{kind: ValidationContext, ca: b.Path},
			sink: func(l fileLoad) {
				m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.setBundle(td, l.sec.Certs, chain) })
			}})
	}
}

// logTrustFile logs the outcome of loading a trust file (an entry with a
// role), and counts a refusal.
func (r *fileRegistry) logTrustFile(e *fileEntry, report, published bool, serving *Secret, err error) {
	if !report {
		return
	}
	fields := []zap.Field{zap.String("role", e.role)}
	if e.trustDomain != "" {
		fields = append(fields, zap.String("trust_domain", e.trustDomain))
	}
	switch {
	case err != nil:
		reason := FileUnreadable
		var fe *FileError
		if errors.As(err, &fe) {
			reason = fe.Reason
			fields = append(fields, zap.String("file", fe.Path), zap.String("reason", fe.Reason), zap.String("error", fe.Err.Error()), zap.String("hint", fe.Hint()))
		} else {
			fields = append(fields, zap.String("file", e.spec.ca), zap.String("reason", reason), zap.Error(err))
		}
		r.metrics.FileErrors.WithLabelValues(reason).Inc()
		switch {
		case serving != nil:
			r.log.Warn("trust file refused; keeping its previous content", fields...)
		case e.role == roleCARoot:
			// The CA client says what this means for the CA connection.
			r.log.Warn("trust file refused; nothing loaded from it yet", fields...)
		default:
			r.log.Error("trust file refused; nothing loaded from it yet", fields...)
		}
	case published:
		fields = append(fields, zap.String("file", serving.Source), zap.Int("certificates", len(serving.Certs)))
		r.log.Info("trust file loaded", fields...)
	default:
		fields = append(fields, zap.String("file", serving.Source))
		r.log.Info("trust file valid again; content unchanged", fields...)
	}
}
