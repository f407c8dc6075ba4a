// This file registers the trust files (the CA's root file, the trust
// anchors, the federated trust bundles) with the file registry, feeds
// what they hold to trust, and logs their loads.

package cache

import (
	"crypto/x509"
	"errors"

	"go.uber.org/zap"
)

// trustFile marks a file registry entry as a trust file. It is no
// resource of its own: the entry's sink feeds what it loads to trust (or,
// for the CA's root file, to the renewal loop). It is logged by role, and
// left out of name errors and expiry warnings, which are about the names
// streams ask for and the mounted workload certificate.
type trustFile struct {
	// role is the "role" key of its log lines: roleAnchors, roleBundle,
	// roleCARoot or roleCRL.
	role string
	// trustDomain is a trust bundle's.
	trustDomain string
}

// addTrustFile registers a trust file read as spec; sink gets what it
// loads. It is called before Run.
func (m *Manager) addTrustFile(name string, tf trustFile, spec fileSpec, sink func(fileLoad)) {
	m.files.addEntry(&fileEntry{name: name, trust: &tf, spec: spec, sink: sink})
}

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
		m.addTrustFile("ca-root-cert", trustFile{role: roleCARoot},
			fileSpec{kind: ValidationContext, ca: cfg.CARootCertFile},
			m.caRootFileChanged)
	}
	if cfg.TrustAnchorsFile != "" {
		m.addTrustFile("trust-anchors", trustFile{role: roleAnchors},
			fileSpec{kind: ValidationContext, ca: cfg.TrustAnchorsFile, allowEmpty: true},
			func(l fileLoad) {
				m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.setAnchors(l.sec.Certs, chain) })
			})
	}
	for _, b := range cfg.TrustBundleFiles {
		td := b.TrustDomain
		m.addTrustFile("trust-bundle:"+td, trustFile{role: roleBundle, trustDomain: td},
			fileSpec{kind: ValidationContext, ca: b.Path},
			func(l fileLoad) {
				m.updateTrust(nil, func(chain []*x509.Certificate) rootsUpdate { return m.trust.setBundle(td, l.sec.Certs, chain) })
			})
	}
}

// logTrustFile logs the outcome of loading a trust file, and counts a
// refusal.
func (r *fileRegistry) logTrustFile(e *fileEntry, out loadOutcome) {
	serving, err := out.serving, out.err
	fields := []zap.Field{zap.String("role", e.trust.role)}
	if e.trust.trustDomain != "" {
		fields = append(fields, zap.String("trust_domain", e.trust.trustDomain))
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
		case e.trust.role == roleCARoot:
			// The CA client says what this means for the CA connection.
			r.log.Warn("trust file refused; nothing loaded from it yet", fields...)
		default:
			r.log.Error("trust file refused; nothing loaded from it yet", fields...)
		}
	case out.published:
		fields = append(fields, zap.String("file", serving.Source), zap.Int("certificates", len(serving.Certs)))
		r.log.Info("trust file loaded", fields...)
	default:
		fields = append(fields, zap.String("file", serving.Source))
		r.log.Info("trust file valid again; content unchanged", fields...)
	}
}
